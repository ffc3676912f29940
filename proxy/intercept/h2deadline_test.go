package intercept_test

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// h2cStart is what an h2c client sends first: the preface and its
// SETTINGS.
func h2cStart() *bytes.Buffer {
	var out bytes.Buffer
	out.WriteString(http2.ClientPreface)
	http2.NewFramer(&out, nil).WriteSettings()
	return &out
}

// h2cBlock is the header block of a request for / with method, and an
// x-p field of pad bytes.
func h2cBlock(method string, pad int) []byte {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: method}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/"},
		{Name: ":authority", Value: "www.example.test"}, {Name: "x-p", Value: strings.Repeat("p", pad)},
	} {
		enc.WriteField(f)
	}
	return hb.Bytes()
}

// h2cStatus reads the server's frames on c until the response head on
// stream 1, and returns its status, or "" once c ends.
func h2cStatus(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	fr := http2.NewFramer(io.Discard, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return ""
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == 1 {
			return h.PseudoValue("status")
		}
	}
}

// An HTTP/2 client's header block that never ends (HEADERS without
// END_HEADERS, a CONTINUATION, then nothing), or a frame that never ends
// (its header announces more than comes), has its connection ended
// requestHeadTimeout after its first byte, with a record saying so: the
// server held what it had read of it for good. A stream of frames that
// keep coming, each within the timeout, though no read ends between two
// of them, passes; so does a wait between requests.
func TestH2RequestDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetRequestHeadTimeout(timeout)()

	unfinished := []struct {
		name  string
		write func(out *bytes.Buffer)
	}{
		{"header block", func(out *bytes.Buffer) {
			b := h2cBlock("GET", 30000)
			fr := http2.NewFramer(out, nil)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:16000]})
			fr.WriteContinuation(1, false, b[16000:])
		}},
		{"frame", func(out *bytes.Buffer) {
			fr := http2.NewFramer(out, nil)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2cBlock("POST", 10), EndHeaders: true})
			fr.WriteData(1, false, make([]byte, 1000))
			out.Truncate(out.Len() - 500)
		}},
	}
	for _, tc := range unfinished {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, _ := r.startUpstream(nil)
			c, _ := r.connectTCP(upEnd, httpDest)
			out := h2cStart()
			tc.write(out)
			start := time.Now()
			c.Write(out.Bytes())
			wantEnded(t, c, start, timeout)
			wantRecordOf(t, r, "http", "HTTP/2 header block or frame not complete")
			wantTimeoutRecords(t, r, tc.name == "frame")
		})
	}

	t.Run("each frame its own timeout", func(t *testing.T) {
		// Frame A comes in two halves 0.1 T apart, and arms the
		// deadline; frame B begins 0.45 T after A and ends 0.7 T after
		// its own first byte: within T of it, so it passes, though the
		// deadline A armed would have cut it 0.55 T after its first byte.
		const timeout = time.Second
		defer intercept.SetRequestHeadTimeout(timeout)()
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstream(nil)
		c, sv := r.connectTCP(upEnd, httpDest)
		status := make(chan string, 1)
		go func() { status <- h2cStatus(t, c) }()
		out := h2cStart()
		http2.NewFramer(out, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2cBlock("POST", 10), EndHeaders: true})
		c.Write(out.Bytes())
		time.Sleep(50 * time.Millisecond)
		var a, b bytes.Buffer
		http2.NewFramer(&a, nil).WriteData(1, false, make([]byte, 1000))
		http2.NewFramer(&b, nil).WriteData(1, true, make([]byte, 1000))
		c.Write(a.Bytes()[:500])
		time.Sleep(timeout / 10)
		c.Write(a.Bytes()[500:])
		time.Sleep(timeout * 35 / 100)
		c.Write(b.Bytes()[:500])
		time.Sleep(timeout * 7 / 10)
		c.Write(b.Bytes()[500:])
		if s := <-status; s != "200" {
			t.Errorf("a frame completed 0.7 T after its first byte: status %q, want 200", s)
		}
		c.Close()
		sv.waitDoneOnce(t) // before the timeout is put back
	})

	t.Run("frames that keep coming", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstream(nil)
		c, _ := r.connectTCP(upEnd, httpDest)
		status := make(chan string, 1)
		go func() { status <- h2cStatus(t, c) }()
		out := h2cStart()
		fr := http2.NewFramer(out, nil)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2cBlock("POST", 10), EndHeaders: true})
		const frames = 9
		for i := range frames {
			fr.WriteData(1, i == frames-1, make([]byte, 1000))
		}
		// Every write but the first is the rest of one frame and the
		// start of the next: no read ends between two frames, for 3
		// timeouts.
		b := out.Bytes()
		head := len(b) - frames*1009
		c.Write(b[:head+500])
		b = b[head+500:]
		for len(b) > 0 {
			time.Sleep(timeout / 3)
			k := min(len(b), 1009)
			c.Write(b[:k])
			b = b[k:]
		}
		if s := <-status; s != "200" {
			t.Fatalf("a request whose frames came over %v: status %q, want 200", frames*timeout/3, s)
		}
	})

	t.Run("idle between requests", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstream(nil)
		c, _ := r.connectTCP(upEnd, httpDest)
		status := make(chan string, 1)
		go func() { status <- h2cStatus(t, c) }()
		// The preface and SETTINGS, then a pause, then a request: a
		// deadline left armed (the preface's) must not end the wait.
		c.Write(h2cStart().Bytes())
		time.Sleep(3 * timeout)
		var out bytes.Buffer
		http2.NewFramer(&out, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2cBlock("GET", 10), EndHeaders: true, EndStream: true})
		c.Write(out.Bytes())
		if s := <-status; s != "200" {
			t.Fatalf("a request after a pause: status %q, want 200", s)
		}
	})
}

// wantTimeoutRecords checks the records of a connection the HTTP/2 frame
// deadline ended: the connection's own says timeout and is no denial (the
// client was allowed, and the appliance ended it), and so does the record
// of the request that was under way, if inFlight: the appliance ended it,
// not the client.
func wantTimeoutRecords(t *testing.T, r *rig, inFlight bool) {
	t.Helper()
	want := 1 // the connection's
	if inFlight {
		want++
	}
	var recs []records.Record
	for end := time.Now().Add(waitLimit); time.Now().Before(end) && len(recs) < want; time.Sleep(20 * time.Millisecond) {
		recs = ofKind(r.records(), "http")
	}
	if len(recs) != want {
		t.Errorf("%d http records, want %d", len(recs), want)
	}
	for _, rec := range recs {
		t.Logf("record: method %q action %s result %s error %q", rec.Method, rec.Action, rec.Result, rec.Error)
		if rec.Action == "deny" || rec.Result != "timeout" || !strings.Contains(rec.Error, "not complete") {
			t.Errorf("record of %q: action %s, result %s, error %q; want no deny, timeout, not complete", rec.Method, rec.Action, rec.Result, rec.Error)
		}
	}
	if n := r.ic.Denied(); n != 0 {
		t.Errorf("Denied() = %d, want 0: a timeout is no denial", n)
	}
}
