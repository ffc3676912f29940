package intercept_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// heldShapes are the header lists TestHeldEstimateMatchesMemory measures:
// what a browser sends, the most tiny fields the list limit (64 KiB, 33
// bytes a field as HTTP/2 counts an empty one-letter field) lets through,
// of few names and of as many, and a few fields of long values.
var heldShapes = []struct {
	name   string
	fields func() []hpack.HeaderField
}{
	{"browser", func() []hpack.HeaderField {
		return []hpack.HeaderField{
			{Name: "user-agent", Value: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"},
			{Name: "accept", Value: "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
			{Name: "accept-language", Value: "en-GB,en;q=0.9"},
			{Name: "cookie", Value: "session=" + strings.Repeat("c", 200)},
		}
	}},
	{"tiny fields, 26 names", func() []hpack.HeaderField {
		f := make([]hpack.HeaderField, 1900)
		for i := range f {
			f[i].Name = string(rune('a' + i%26))
		}
		return f
	}},
	{"tiny fields, all names", func() []hpack.HeaderField {
		f := make([]hpack.HeaderField, 1600)
		for i := range f {
			f[i] = hpack.HeaderField{Name: fmt.Sprintf("x%d", i), Sensitive: true}
		}
		return f
	}},
	{"long values", func() []hpack.HeaderField {
		f := make([]hpack.HeaderField, 7)
		for i := range f {
			f[i] = hpack.HeaderField{Name: fmt.Sprintf("x-long-%d", i), Value: strings.Repeat("v", 8000), Sensitive: true}
		}
		return f
	}},
}

// TestHeldEstimateMatchesMemory measures what a bumped HTTP/2 stream
// holds (the heap and goroutine stacks grown by 99 of them, past a first),
// for header lists of several shapes, beside what the session says it
// holds for its client (AddHeld, held.go's estimate), in the two phases
// of a request an origin of the client's own can make last: waiting on an
// origin that never answers, and past a response head whose body never
// comes (goproxy's handler copying it then holds the response and a
// 32 KiB buffer besides). The estimate is within a factor of 1.5 of the
// measurement each way. The log lines are where held.go's constants come
// from.
func TestHeldEstimateMatchesMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what is measured")
	}
	for _, phase := range []struct {
		name      string
		headFirst bool
	}{{"waiting", false}, {"past the head", true}} {
		for _, shape := range heldShapes {
			// A subtest each: the last one's session ends with its rig.
			t.Run(phase.name+"/"+shape.name, func(t *testing.T) {
				measured, estimated := measureStreams(t, shape.fields(), phase.headFirst)
				t.Logf("%d B measured a stream, %d B estimated (%.2f)", measured, estimated, float64(estimated)/float64(measured))
				if estimated*3 < measured*2 || estimated*2 > measured*3 {
					t.Errorf("%d B estimated a stream, %d B measured: off by more than half", estimated, measured)
				}
			})
		}
	}
}

// measureStreams opens a bumped HTTP/2 connection whose origin takes
// streams and answers none (or, headFirst, answers each with a head and a
// first byte of body, then nothing), a first stream, then 99 more with
// fields; it returns what each of the 99 grew the heap and stacks by, and
// what the session said each holds.
func measureStreams(t *testing.T, fields []hpack.HeaderField, headFirst bool) (measured, estimated int64) {
	const streams = 100
	r := newRig(t, testPolicy)
	upEnd, originEnd := testnet.TCPPair(t)
	var atOrigin, gotHeads atomic.Int64
	if headFirst {
		headFirstH2Origin(r, originEnd, &atOrigin)
	} else {
		silentH2Origin(r, originEnd, &atOrigin)
	}
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	defer tlsc.Close()
	tlsc.SetDeadline(time.Now().Add(3 * waitLimit))
	go countHeads(tlsc, &gotHeads)
	var buf, hb bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings()
	enc := hpack.NewEncoder(&hb)
	open := func(s int, fields []hpack.HeaderField) { writeWaitGet(fr, enc, &hb, s, "www.example.test", fields) }
	// Past the head, the head has reached the client: goproxy's
	// handler is copying the body.
	wait := func(n int64) {
		t.Helper()
		for end := time.Now().Add(waitLimit); atOrigin.Load() < n || headFirst && gotHeads.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("the origin has %d streams, the client %d heads, want %d", atOrigin.Load(), gotHeads.Load(), n)
			}
		}
	}
	open(0, fields)
	measured, estimated = measureStreamGrowth(r, tlsc, &buf, &hb, streams, func(s int) { open(s, fields) }, wait)
	// Every charge is given back once the streams are over: the client
	// gone, each stream's record written.
	tlsc.Close()
	waitHeldZero(t, r)
	return measured, estimated
}

// measureStreamGrowth sends c the first stream buf holds and waits for it
// (wait(1)), then opens streams 1 to n-1 (open, into buf through hb) and
// sends them at once; it returns what each of those grew the heap and
// stacks by, once wait(n) says they are all in place, and what the
// session said each holds (r.held).
func measureStreamGrowth(r *rig, c io.Writer, buf, hb *bytes.Buffer, n int, open func(s int), wait func(n int64)) (measured, estimated int64) {
	c.Write(buf.Bytes())
	buf.Reset()
	wait(1)
	for s := 1; s < n; s++ {
		open(s)
	}
	wire := bytes.Clone(buf.Bytes())
	*buf, *hb = bytes.Buffer{}, bytes.Buffer{}
	// The wire bytes are the test's, live now and not after: not the
	// streams'.
	heap0, held0 := settledHeapAndStacks()-int64(cap(wire)), r.held.Load()
	c.Write(wire)
	wire = nil
	wait(int64(n))
	heap1, held1 := heapAndStacks(), r.held.Load()
	return (heap1 - heap0) / int64(n-1), (held1 - held0) / int64(n-1)
}

// waitHeldZero waits until r's sessions say they hold nothing for their
// clients (AddHeld), for waitLimit at most.
func waitHeldZero(t *testing.T, r *rig) {
	t.Helper()
	for end := time.Now().Add(waitLimit); r.held.Load() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the session still says it holds %d B for its client", r.held.Load())
		}
	}
}

// countHeads counts the HEADERS frames the client reads on c, until c
// fails.
func countHeads(c io.Reader, heads *atomic.Int64) {
	fr := http2.NewFramer(io.Discard, c)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		if _, ok := f.(*http2.HeadersFrame); ok {
			heads.Add(1)
		}
	}
}

// headFirstH2Origin takes streams over TLS on c and answers each with a
// response head and a first event (no END_STREAM), then nothing: an event
// stream that stalls. heads counts the streams answered so.
func headFirstH2Origin(r *rig, c net.Conn, heads *atomic.Int64) {
	tc := tls.Server(c, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	go func() {
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		serveH2Frames(tc, func(fr *http2.Framer, f *http2.HeadersFrame) bool {
			hb.Reset()
			enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "text/event-stream"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
			fr.WriteData(f.StreamID, false, []byte(":\n"))
			heads.Add(1)
			return true
		})
	}()
}

// heapAndStacks is what the heap's live objects and the goroutine stacks
// take, after two collections.
// settledHeapAndStacks is heapAndStacks once it stops falling: earlier
// rigs' goroutines still winding down free memory, which a measurement
// started before they end counts against the streams (a run measured
// 11 KB a stream against 23). At most two seconds.
func settledHeapAndStacks() int64 {
	last := heapAndStacks()
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
		now := heapAndStacks()
		if last-now < 64<<10 {
			return now
		}
		last = now
	}
	return last
}

func heapAndStacks() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc) + int64(m.StackInuse)
}

// writeWaitGet writes on fr the header block of a GET of /wait for
// authority with fields besides, opening client stream s (id 2s+1),
// encoded through enc into hb.
func writeWaitGet(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, s int, authority string, fields []hpack.HeaderField) {
	hb.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority}, {Name: ":path", Value: "/wait"}} {
		enc.WriteField(f)
	}
	for _, f := range fields {
		enc.WriteField(f)
	}
	writeBlock(fr, uint32(2*s+1), hb.Bytes())
}

// writeBlock writes on fr the header block that opens stream id, ending
// it: a HEADERS frame and as many CONTINUATIONs as the default frame size
// takes.
func writeBlock(fr *http2.Framer, id uint32, block []byte) {
	const max = 16 << 10
	first := block[:min(len(block), max)]
	block = block[len(first):]
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		n := min(len(block), max)
		fr.WriteContinuation(id, n == len(block), block[:n])
		block = block[n:]
	}
}
