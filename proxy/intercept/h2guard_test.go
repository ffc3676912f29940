package intercept_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// h2Ev is what a test keeps of a frame the server wrote: a frame is
// valid only until the next is read.
type h2Ev struct {
	typ      http2.FrameType
	stream   uint32
	flags    http2.Flags
	status   string // a response head's
	settings map[http2.SettingID]uint32
	code     http2.ErrCode // a GOAWAY's or RST_STREAM's
	last     uint32        // a GOAWAY's last stream
}

// h2cFrames reads the server's frames on c until it ends, and sends each
// on the channel returned, closed at the end.
func h2cFrames(c net.Conn) <-chan h2Ev {
	ch := make(chan h2Ev, 1<<16)
	go func() {
		defer close(ch)
		fr := http2.NewFramer(nil, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			ev := h2Ev{typ: f.Header().Type, stream: f.Header().StreamID, flags: f.Header().Flags}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					ev.settings = map[http2.SettingID]uint32{}
					f.ForeachSetting(func(s http2.Setting) error { ev.settings[s.ID] = s.Val; return nil })
				}
			case *http2.MetaHeadersFrame:
				ev.status = f.PseudoValue("status")
			case *http2.GoAwayFrame:
				ev.code, ev.last = f.ErrCode, f.LastStreamID
			case *http2.RSTStreamFrame:
				ev.code = f.ErrCode
			}
			ch <- ev
		}
	}()
	return ch
}

// nextFrame returns the next frame of ch that ok accepts; ok false if ch
// ends (or waitLimit passes) first.
func nextFrame(t *testing.T, ch <-chan h2Ev, ok func(h2Ev) bool) (h2Ev, bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case f, open := <-ch:
			if !open {
				return h2Ev{}, false
			}
			if ok(f) {
				return f, true
			}
		case <-deadline:
			return h2Ev{}, false
		}
	}
}

func isGoAway(f h2Ev) bool { return f.typ == http2.FrameGoAway }

// refusedRecord returns the http deny record of a connection a guard
// refused, if there is one.
func refusedRecord(recs []records.Record) *records.Record {
	for _, rec := range ofKind(recs, "http") {
		if rec.Action == "deny" && strings.HasPrefix(rec.Error, "connection refused: ") {
			return &rec
		}
	}
	return nil
}

// An HTTP/2 client is told the largest frame it may send is 16 KiB, not
// the 1 MiB goproxy's server advertises (whose frame reader then keeps a
// buffer the size of the largest frame read, for the connection's life):
// a frame of 16 KiB passes, one byte more gets GOAWAY(FRAME_SIZE_ERROR), a
// deny record, and the connection closed.
func TestH2MaxFrameSize(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, _ := r.startUpstream(nil)
	c, sv := r.connectTCP(upEnd, httpDest)
	frames := h2cFrames(c)
	c.Write(h2cStart().Bytes())

	f, ok := nextFrame(t, frames, func(f h2Ev) bool { return f.settings != nil })
	if !ok {
		t.Fatal("no SETTINGS from the server")
	}
	if v, ok := f.settings[http2.SettingMaxFrameSize]; !ok || v != 16384 {
		t.Fatalf("the server's SETTINGS_MAX_FRAME_SIZE is %d (set: %v), want 16384", v, ok)
	}

	// A frame of the largest size advertised, of a type the server
	// ignores, then a request: answered.
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	fr.WriteRawFrame(0xfe, 0, 0, make([]byte, 16384))
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2cBlock("GET", 10), EndHeaders: true, EndStream: true})
	c.Write(out.Bytes())
	if f, _ := nextFrame(t, frames, func(f h2Ev) bool {
		return f.typ == http2.FrameHeaders && f.stream == 1 || isGoAway(f)
	}); f.status != "200" {
		t.Fatalf("after a 16384-byte frame the request got %+v, want a 200", f)
	}

	// One byte more.
	out.Reset()
	fr.WriteRawFrame(0xfe, 0, 0, make([]byte, 16385))
	c.Write(out.Bytes())
	if g, ok := nextFrame(t, frames, isGoAway); !ok || g.code != http2.ErrCodeFrameSize || g.last != 1 {
		t.Fatalf("after a 16385-byte frame: GOAWAY %+v (%v), want FRAME_SIZE_ERROR, last stream 1", g, ok)
	}
	if f, ok := nextFrame(t, frames, func(h2Ev) bool { return true }); ok {
		t.Fatalf("the server wrote on after its GOAWAY: %+v", f)
	}
	sv.waitDoneOnce(t)
	rec := refusedRecord(r.records())
	if rec == nil || !strings.Contains(rec.Error, "a frame of 16385 bytes") {
		t.Fatalf("no deny record for the refused connection: %+v", ofKind(r.records(), "http"))
	}
}

// readCountListener counts the bytes its connections read.
type readCountListener struct {
	net.Listener
	in *atomic.Int64
}

type readCountConn struct {
	net.Conn
	in *atomic.Int64
}

func (c readCountConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.in.Add(int64(n))
	return n, err
}

func (l readCountListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return readCountConn{c, l.in}, nil
}

// loopbackOrigin is an HTTP/1 destination on loopback that answers "ok"
// after delay: it returns its address, and counts the requests it served
// and the bytes it read.
func loopbackOrigin(t *testing.T, delay time.Duration) (addr string, served, read *atomic.Int64) {
	served, read = new(atomic.Int64), new(atomic.Int64)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
		}
		w.Write([]byte("ok"))
	})}
	go srv.Serve(readCountListener{ln, read})
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), served, read
}

// dialTo has the interceptor dial addr, whatever the destination, and
// counts the dials.
func dialTo(addr string, dials *atomic.Int64) func(*intercept.Config) {
	return func(c *intercept.Config) {
		c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
}

// An h2c client that indexes one 4000-byte value, then names it fifteen
// times in each request's header block (about 20 bytes, a list just under
// the limit, written out in full to an HTTP/1 destination), is stopped
// once its lists have decoded to more than 128 times what it sent, plus
// 1 MiB: GOAWAY(ENHANCE_YOUR_CALM), and a deny record. Unbounded, 2000
// such requests had the destination read 2000 times the client's bytes.
func TestH2HpackExpansionBudget(t *testing.T) {
	addr, served, originIn := loopbackOrigin(t, 0)
	var dials atomic.Int64
	r := newRig(t, testPolicy, dialTo(addr, &dials))
	upEnd, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, sv := r.connectTCP(upEnd, httpDest)
	frames := h2cFrames(c)
	var responses atomic.Int64
	var calm atomic.Bool
	goAway := make(chan h2Ev, 1)
	go func() {
		for f := range frames {
			switch {
			case f.typ == http2.FrameData && f.flags.Has(http2.FlagDataEndStream):
				responses.Add(1)
			case isGoAway(f):
				calm.Store(true)
				goAway <- f
			}
		}
	}()

	out := h2cStart()
	http2.NewFramer(out, nil).WriteWindowUpdate(0, 1<<30) // responses never wait
	wire := int64(out.Len() - len(http2.ClientPreface))
	c.Write(out.Bytes())
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/"},
		{Name: ":authority", Value: "www.example.test"},
	}
	big := strings.Repeat("a", 4000)
	for range 15 {
		fields = append(fields, hpack.HeaderField{Name: "x-a", Value: big})
	}
	var hb, buf bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	fr := http2.NewFramer(&buf, nil)
	const n = 2000
	for i := 0; i < n && !calm.Load(); i++ {
		hb.Reset()
		for _, f := range fields {
			enc.WriteField(f)
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
		for int64(i) > responses.Load() && !calm.Load() { // one at a time
			time.Sleep(100 * time.Microsecond)
		}
		wire += int64(buf.Len())
		if _, err := c.Write(buf.Bytes()); err != nil {
			break
		}
		buf.Reset()
	}
	var g h2Ev
	select {
	case g = <-goAway:
	case <-time.After(waitLimit):
	}
	t.Logf("the client sent %d bytes of frames; the destination served %d requests and read %d bytes", wire, served.Load(), originIn.Load())
	if g.code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("no GOAWAY(ENHANCE_YOUR_CALM) after %d requests: %+v", n, g)
	}
	// Each request's HTTP/1 head is a little larger than its list's
	// decoded fields (a request line, a Host), by far less than 1 KiB.
	if max := 128*wire + 1<<20 + served.Load()<<10; originIn.Load() > max {
		t.Errorf("the destination read %d bytes, over %d", originIn.Load(), max)
	}
	if served.Load() == 0 { // the budget's slack lets the first ones pass
		t.Error("no request reached the destination")
	}
	sv.waitDoneOnce(t)
	if rec := refusedRecord(r.records()); rec == nil || !strings.Contains(rec.Error, "ENHANCE_YOUR_CALM: header lists decoded to") {
		t.Fatalf("no deny record for the refused connection: %+v", rec)
	}
}

// h2cRequests writes n requests for host on streams first, first+2, …,
// each reset (RST_STREAM, CANCEL) right after its HEADERS when reset is
// set, in batches of 100 a few milliseconds apart: below x/net's own
// bound on resets queued before their handlers start. It stops at the
// first write that fails, and returns the next stream.
func h2cRequests(c net.Conn, enc *hpack.Encoder, hb *bytes.Buffer, host string, first uint32, n int, reset bool) uint32 {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	id := first
	for i := range n {
		hb.Reset()
		for _, f := range []hpack.HeaderField{
			{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/"},
			{Name: ":authority", Value: host},
		} {
			enc.WriteField(f)
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
		if reset {
			fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		id += 2
		if i%100 == 99 || i == n-1 {
			if _, err := c.Write(buf.Bytes()); err != nil {
				break
			}
			buf.Reset()
			time.Sleep(10 * time.Millisecond)
		}
	}
	return id
}

// Rapid Reset paced below x/net's own bound: an h2c client that resets
// each stream right after opening it is sent GOAWAY(ENHANCE_YOUR_CALM)
// once more than 100 streams, and more than half of those it opened that
// the appliance served, were reset before their response. Until then each started handler costs a
// record, and perhaps an upstream dial: bounded now by the limit, where
// 2000 such pairs made about 2000 records. Resets of streams already
// answered do not count.
func TestH2RapidResetLimit(t *testing.T) {
	r, c, sv, frames, dials, served := h2cOriginRig(t)
	c.Write(h2cStart().Bytes())
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)

	// 150 requests each reset once its response head has come: no
	// premature resets.
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	id := uint32(1)
	for range 150 {
		id = h2cRequests(c, enc, &hb, "www.example.test", id, 1, false)
		if f, ok := nextFrame(t, frames, func(f h2Ev) bool { return f.typ == http2.FrameHeaders || isGoAway(f) }); !ok || f.status != "200" {
			t.Fatalf("stream %d: %+v", id-2, f)
		}
		buf.Reset()
		fr.WriteRSTStream(id-2, http2.ErrCodeCancel)
		c.Write(buf.Bytes())
	}

	before := len(ofKind(r.records(), "http"))
	dialsBefore := dials.Load()
	const pairs = 2000
	h2cRequests(c, enc, &hb, "www.example.test", id, pairs, true)
	g, ok := nextFrame(t, frames, isGoAway)
	if !ok || g.code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("no GOAWAY(ENHANCE_YOUR_CALM) after %d HEADERS and RST_STREAM pairs: %+v", pairs, g)
		c.Close()
	}
	sv.waitDoneOnce(t)
	recs := ofKind(r.records(), "http")
	rec := refusedRecord(recs)
	if rec == nil || !strings.Contains(rec.Error, "streams reset before their response") {
		t.Errorf("no deny record for the refused connection: %+v", rec)
	}
	// The streams the server was handed before the GOAWAY: those of the
	// 150, and about 150 more (the limit is past half of all served).
	made := len(recs) - before
	t.Logf("%d records, %d dials and %d requests at the destination for the pairs", made, dials.Load()-dialsBefore, served.Load()-150)
	if made > 200 {
		t.Errorf("%d records for %d reset streams: the limit did not hold", made, pairs)
	}
	if d := dials.Load() - dialsBefore; d > 200 {
		t.Errorf("%d upstream dials for %d reset streams", d, pairs)
	}
}

// An HTTP/2 client's session paces its upstream dials: 16 at once, 16 a
// second after that. Here a destination that closes every connection
// after its response has each of 60 concurrent streams dial (a reset
// stream's cancelled round trip closes its connection the same way); all
// are answered, and the dials keep to the pace however fast the streams
// came.
func TestH2UpstreamDialPace(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	var dials atomic.Int64
	r := newRig(t, testPolicy, dialTo(ln.Addr().String(), &dials))
	upEnd, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := r.connectTCP(upEnd, httpDest)
	frames := h2cFrames(c)
	c.Write(h2cStart().Bytes())
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	const n = 60
	start := time.Now()
	h2cRequests(c, enc, &hb, "www.example.test", 1, n, false)
	for i := range n {
		f, ok := nextFrame(t, frames, func(f h2Ev) bool { return f.typ == http2.FrameHeaders || isGoAway(f) })
		if !ok || f.status != "200" {
			t.Fatalf("response %d: %+v (%v)", i, f, ok)
		}
	}
	elapsed := time.Since(start)
	most := 16 + int64(16*elapsed.Seconds()) + 1
	t.Logf("%d requests answered in %v with %d dials (at most %d)", n, elapsed, dials.Load(), most)
	if d := dials.Load(); d > most {
		t.Errorf("%d dials in %v, over the pace (%d)", d, elapsed, most)
	}
}

// h2cOriginRig is an h2c client's connection through the interceptor to a
// loopback origin answering after 20 ms: the rig, the client's end, the
// session, its frames as the client reads them, the dials to the origin
// and the requests it served.
func h2cOriginRig(t *testing.T) (*rig, *net.TCPConn, *served, <-chan h2Ev, *atomic.Int64, *atomic.Int64) {
	t.Helper()
	addr, served, _ := loopbackOrigin(t, 20*time.Millisecond)
	dials := new(atomic.Int64)
	r := newRig(t, testPolicy, dialTo(addr, dials))
	upEnd, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, sv := r.connectTCP(upEnd, httpDest)
	return r, c, sv, h2cFrames(c), dials, served
}
