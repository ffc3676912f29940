package proxy

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// shortBody answers with 3000 bytes of known length: a body that fits
// x/net's 4 KiB per-stream write buffer whole, so that goproxy's copy of
// it never waits and all of it is left for the server's final flush,
// after goproxy's handler has returned.
func shortBody(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Length", "3000")
	w.Write(make([]byte, 3000))
}

// shortBodyTrailers answers with 3000 bytes and a trailer, as gRPC does:
// goproxy flushes the server's buffer before it sets the trailers, after
// the body's last read.
func shortBodyTrailers(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Trailer", "Grpc-Status")
	w.Header().Set("Content-Type", "application/grpc")
	w.Write(make([]byte, 3000))
	w.Header().Set("Grpc-Status", "0")
}

// checkStreamEndsStall opens streams to the rig with no window, and reads
// the connection granting none: the write of each response's last bytes
// must be bounded by the write-stall timeout (1 s) as any other write to
// a stream is: the session ended within a few timeouts (not left serving
// for 8), the stall counted once, every request recorded as stalled, and
// no goroutine of the session left.
func checkStreamEndsStall(t *testing.T, r *bumpStallRig, streams int) {
	t.Helper()
	c, fr := r.zeroWindowStreams(t, streams)
	start := time.Now()
	heads, err := readGrantingNothing(c, fr, 8*time.Second)
	t.Logf("the client's connection: %d response heads, then %v after %v", heads, err, time.Since(start).Round(time.Millisecond))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the client, granting %d streams no window, was still served after 8 s (tcp_stalled %d)", streams, r.p.Stats().TCPStalled)
	}
	rec, ok := r.tlsRecord(t, 5*time.Second)
	if !ok {
		t.Fatal("no tls record after the connection was ended")
	}
	r.checkStalled(t, rec, "client (on an HTTP/2 stream)")
	if got := r.p.Stats().TCPStalled; got != 1 {
		t.Errorf("tcp_stalled %d, want 1", got)
	}
	// Each request's record is written as goproxy closes its body, once
	// the flush the Abort ended has returned.
	var reqs, stalled int
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		reqs, stalled = 0, 0
		for _, req := range r.sink.parse(t) {
			if req.Kind == "http" {
				reqs++
				if req.Result == "stalled" {
					stalled++
				} else {
					t.Logf("a request's record: result %q, error %q, bytes_in %d", req.Result, req.Error, req.BytesIn)
				}
			}
		}
		if reqs >= streams {
			break
		}
	}
	if reqs != streams || stalled != streams {
		t.Errorf("%d request records, %d of them stalled; want %d, all stalled", reqs, stalled, streams)
	}
	if n := r.p.stalls.size(); n != 0 {
		t.Errorf("the stall watch still holds %d writes", n)
	}
	if g := sessionGoroutines(3 * time.Second); g != "" {
		t.Errorf("goroutines of the session left after it ended:\n%s", g)
	}
}

// TestBumpH2StreamFinalFlushStalls: a short response of known length
// (3000 bytes) is copied whole into x/net's per-stream buffer, and the
// server writes it, with END_STREAM, only after goproxy's handler has
// returned. A client that grants the stream no window had that last
// write wait for good, unwatched: each stream's handler and buffers
// pinned, its slot taken, and records saying ok for bytes never sent.
// The body's end is flushed under the stream's watch now, so the session
// is ended as stalled.
func TestBumpH2StreamFinalFlushStalls(t *testing.T) {
	checkStreamEndsStall(t, newBumpStallRig(t, time.Second, shortBody, "h2"), 20)
}

// TestBumpH2StreamTrailerFlushStalls: the same for a response with
// trailers, whose bytes goproxy flushes after the body's last read, to
// a stream with no window: the session is ended as stalled, and every
// request has its record (they were never written before: the handlers
// never got as far as closing the body).
func TestBumpH2StreamTrailerFlushStalls(t *testing.T) {
	checkStreamEndsStall(t, newBumpStallRig(t, time.Second, shortBodyTrailers, "h2"), 20)
}

// TestBumpH2StreamEndRelayed: the flush of a body's end changes nothing
// for a client that reads: short bodies, with and without trailers, come
// whole, with their trailers, and are recorded ok.
func TestBumpH2StreamEndRelayed(t *testing.T) {
	r := newBumpStallRig(t, time.Second, func(r *bumpStallRig, w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/trailers" {
			shortBodyTrailers(r, w, req)
			return
		}
		shortBody(r, w, req)
	}, "h2")
	cc, err := (&http2.Transport{}).NewClientConn(r.dialTLS(t, "h2"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, path := range []string{"/short", "/trailers"} {
		req, _ := http.NewRequest("GET", "https://big.example"+path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != 3000 {
			t.Errorf("%s: read %d bytes of 3000, then %v", path, n, err)
		}
		if path == "/trailers" && resp.Trailer.Get("Grpc-Status") != "0" {
			t.Errorf("%s: trailers %v, want Grpc-Status 0", path, resp.Trailer)
		}
	}
	var ok int
	for end := time.Now().Add(5 * time.Second); ok < 2 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		ok = 0
		for _, rec := range r.sink.parse(t) {
			if rec.Kind == "http" && rec.Result == "ok" && rec.BytesIn == 3000 {
				ok++
			}
		}
	}
	if ok != 2 {
		t.Errorf("%d request records ok with bytes_in 3000, want 2", ok)
	}
	if got := r.p.Stats().TCPStalled; got != 0 {
		t.Errorf("tcp_stalled %d, want 0", got)
	}
}
