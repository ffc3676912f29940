package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestBumpH2ClientGrantsNoWindow: a bumped HTTP/2 client that opens many
// streams for large bodies and never grants a stream window keeps reading
// the connection (no TCP write of the appliance ever waits, so the write-
// stall bound never sees it), while the appliance's HTTP/2 transport takes
// each stream's body from the destination into memory. x/net's default
// windows (4 MiB a stream, 1 GiB a connection) let 20 streams pin 80 MiB,
// 250 a gigabyte; the upstream windows are capped now
// (upstreamH2ReceivePerConnection), so the destination gets to send that
// much and no more, however many streams.
func TestBumpH2ClientGrantsNoWindow(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, (*bumpStallRig).flood, "h2", "http/1.1")
	const streams = 20
	c, fr := r.zeroWindowStreams(t, streams)
	// Read the connection for 5 s, answering what keeps it alive, never
	// granting a window.
	readGrantingNothing(c, fr, 5*time.Second)
	served := r.served.Load()
	t.Logf("%d streams with no window for 5 s: the destination served %d KiB", streams, served>>10)
	// The connection window, plus what the sockets between the destination
	// and the appliance hold: far less than the 4 MiB a stream the
	// defaults took.
	if served > 24<<20 {
		t.Errorf("the destination served %d MiB into streams the client never opened a window on", served>>20)
	}
}

// zeroWindowStreams opens an HTTP/2 connection to big.example through the
// appliance, bumped, whose SETTINGS grant streams no window, and sends n
// GETs of /big on it.
func (r *bumpStallRig) zeroWindowStreams(t *testing.T, n int) (*tls.Conn, *http2.Framer) {
	t.Helper()
	c := r.dialTLS(t, "h2")
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q with the appliance, want h2", p)
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := range n {
		hb.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "big.example"}, {Name: ":path", Value: "/big"}} {
			enc.WriteField(f)
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	return c, fr
}

// readGrantingNothing reads fr's connection for up to d, answering what
// keeps it alive, never granting a window; it returns the error that
// ended the reading (a timeout when d ran out), and how many streams got
// a response head.
func readGrantingNothing(c net.Conn, fr *http2.Framer, d time.Duration) (heads int, err error) {
	c.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return heads, err
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			heads++
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		}
	}
}

// TestBumpH2ClientStallsStreams: a bumped HTTP/2 client that opens
// streams for endless bodies, grants them no window and goes on reading
// the connection leaves each stream's handler waiting in its write for
// good, with its buffers (about 95 KiB a stream): no write to a
// connection waits, so no connection's watch sees it. Each stream's
// relay is watched too now: within about two write-stall timeouts the
// session is ended as stalled, the client reset, its tls record and
// every request's record saying stalled and naming the HTTP/2 stream,
// the stall counted once, and the session's goroutines gone.
func TestBumpH2ClientStallsStreams(t *testing.T) {
	r := newBumpStallRig(t, time.Second, (*bumpStallRig).flood, "h2", "http/1.1")
	const streams = 20
	c, fr := r.zeroWindowStreams(t, streams)
	// Without the watch the client would read on untouched for the
	// whole 15 s (ten timeouts).
	heads, err := readGrantingNothing(c, fr, 15*time.Second)
	t.Logf("the client's connection: %d response heads, then %v", heads, err)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the client, granting %d streams no window, was still served after 15 s (tcp_stalled %d)", streams, r.p.Stats().TCPStalled)
	}
	rec, ok := r.tlsRecord(t, 5*time.Second)
	if !ok {
		t.Fatal("no tls record after the connection was ended")
	}
	r.checkStalled(t, rec, "client (on an HTTP/2 stream)")
	var reqs int
	for _, req := range r.sink.parse(t) {
		if req.Kind == "http" {
			reqs++
			if req.Result != "stalled" {
				t.Errorf("a request's record: result %q, error %q; want stalled", req.Result, req.Error)
			}
		}
	}
	if reqs != streams {
		t.Errorf("%d request records, want one for each of the %d streams", reqs, streams)
	}
	// The destination's handlers end too: their connection was reset.
	select {
	case <-r.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the destination's handlers still write")
	}
	if got := r.p.Stats().TCPActive; got != 0 {
		t.Errorf("tcp_active %d after the session ended, want 0", got)
	}
	if n := r.p.stalls.size(); n != 0 {
		t.Errorf("the stall watch still holds %d writes", n)
	}
	// The session's goroutines, and the destination's handlers, are gone.
	if g := sessionGoroutines(3 * time.Second); g != "" {
		t.Errorf("goroutines of the session left after it ended:\n%s", g)
	}
}

// TestBumpH2SlowOriginNotStalled: the stream watch times writes to the
// client only: an HTTP/2 response whose origin pauses longer than the
// write-stall timeout between pieces (a long poll, a slow stream) while
// the client reads all it gets is relayed whole, not ended as stalled.
func TestBumpH2SlowOriginNotStalled(t *testing.T) {
	r := newBumpStallRig(t, time.Second, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		rc := http.NewResponseController(w)
		for range 3 {
			w.Write(make([]byte, 40<<10))
			rc.Flush()
			time.Sleep(1500 * time.Millisecond)
		}
	}, "h2")
	c := r.dialTLS(t, "h2")
	cc, err := (&http2.Transport{}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req, _ := http.NewRequest("GET", "https://big.example/slow", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 3*40<<10 {
		t.Fatalf("read %d bytes of %d, then %v", n, 3*40<<10, err)
	}
	if got := r.p.Stats().TCPStalled; got != 0 {
		t.Errorf("tcp_stalled %d, want 0", got)
	}
}

// TestBumpH2SlowReaderNotStalled: an HTTP/2 client that reads a stream
// slowly but steadily grants its window back as slowly, so goproxy's
// 32 KiB piece of the body would take longer to write than the timeout
// (2 s): 2.7 s at 12 KB/s. Then the client slows down to 4 KB/s, where
// even a 16 KiB piece takes 4 s. Neither is a stall: the stream takes
// bytes all the while. It is not aborted: the pieces are cut to what
// the stream's rate writes in a fraction of a second.
func TestBumpH2SlowReaderNotStalled(t *testing.T) {
	r := newBumpStallRig(t, 2*time.Second, (*bumpStallRig).flood, "h2")
	c := r.dialTLS(t, "h2")
	cc, err := (&http2.Transport{}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req, _ := http.NewRequest("GET", "https://big.example/big", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Past the client transport's 4 MiB stream window first: from then on
	// the appliance gets window only as the body is read.
	if _, err := io.CopyN(io.Discard, resp.Body, 4<<20); err != nil {
		t.Fatal(err)
	}
	readEvery := func(chunk int, d time.Duration) {
		buf := make([]byte, chunk)
		for end := time.Now().Add(d); time.Now().Before(end); {
			time.Sleep(200 * time.Millisecond)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatalf("reading %d bytes every 200 ms: %v (tcp_stalled %d)", chunk, err, r.p.Stats().TCPStalled)
			}
		}
	}
	readEvery(2400, 4*time.Second) // 12 KB/s
	readEvery(800, 5*time.Second)  // 4 KB/s
	r.expectNotStalled(t)
}
