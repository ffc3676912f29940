package intercept_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// silentOrigin is an HTTP/1 origin that takes requests and answers none
// until release is closed.
func silentOrigin(t *testing.T) (ln net.Listener, release chan struct{}) {
	t.Helper()
	release = make(chan struct{})
	ln = serveOrigin(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		<-release
		io.WriteString(w, "ok")
	})})
	return ln, release
}

// serveOrigin serves srv on a loopback listener, which it returns, until
// the test ends.
func serveOrigin(t *testing.T, srv *http.Server) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln
}

// h2Get sends a GET of url on cc and reads its answer whole: it returns
// the answer's status, or -1 if the round trip failed. Streams run it in
// goroutines of their own, so it reports rather than failing the test.
func h2Get(cc *http2.ClientConn, url string) int {
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return -1
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestH2StreamsWaitingForUpstreamAnswered: an HTTP/2 client's streams
// towards an HTTP/1 origin that holds all 8 upstream connections wait for
// one to come free, but not for good: once none has for the wait bound,
// each is answered 503, and its record says why. They waited, each with
// its handler, request and header list, for as long as the origin liked
// (the review's probe: 242 streams, 3-38 MB, for 65 s and on).
func TestH2StreamsWaitingForUpstreamAnswered(t *testing.T) {
	defer intercept.SetUpstreamWaitTimeout(300 * time.Millisecond)()
	const streams = 20
	ln, release := silentOrigin(t)
	r, first := originRig(t, ln)
	c, _ := r.connect(first, httpDest)
	cc := h2cOver(t, c, 3*waitLimit)
	codes := make(chan int, streams)
	start := time.Now()
	for range streams {
		go func() { codes <- h2Get(cc, "http://www.example.test/slow") }()
	}
	var n503 int
	timeout := time.After(waitLimit)
	for n503 < streams-8 {
		select {
		case code := <-codes:
			if code != http.StatusServiceUnavailable {
				t.Fatalf("a waiting stream got %d, want 503", code)
			}
			n503++
		case <-timeout:
			t.Fatalf("%d of the %d streams waiting for an upstream connection answered within %v (wait bound 300ms)", n503, streams-8, waitLimit)
		}
	}
	t.Logf("%d waiting streams answered 503 in %v", n503, time.Since(start).Round(time.Millisecond))
	close(release)
	for range 8 {
		if code := <-codes; code != http.StatusOK {
			t.Errorf("a stream the origin served got %d", code)
		}
	}
	cc.Close()
	var got int
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Status == http.StatusServiceUnavailable {
			got++
			if !strings.Contains(rec.Error, "upstream connection") {
				t.Errorf("the 503's record says %q: not why", rec.Error)
			}
		}
	}
	if got != streams-8 {
		t.Errorf("%d records of a 503, want %d", got, streams-8)
	}
}

// TestH2StreamsBeyondWaitingBoundRefused: a client that ignores the
// concurrent streams the appliance advertises (100) and opens 250 at once
// towards a silent HTTP/1 origin has those past the MaxStreamsInFlight in
// flight (all of them without a response head) answered 503 at once
// (streamcap.go), and those of them still
// waiting for a connection (all but the origin's 8) once the wait bound
// has passed: the connection holds 8 streams then, not 250 for good.
// Each 503's record says which bound.
func TestH2StreamsBeyondWaitingBoundRefused(t *testing.T) {
	// Long enough for all 250 streams to reach the session before the first
	// wait ends: one that ended early would free a place in the count for a
	// later stream, moving it from "at once" to "after the bound".
	defer intercept.SetUpstreamWaitTimeout(2 * time.Second)()
	const streams = 250
	ln, release := silentOrigin(t)
	defer close(release)
	r, first := originRig(t, ln)
	c, _ := r.connect(first, httpDest)
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * waitLimit))
	var buf, hb bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings()
	enc := hpack.NewEncoder(&hb)
	for s := range streams {
		writeGet(fr, enc, &hb, uint32(2*s+1), "http")
	}
	go c.Write(buf.Bytes())

	rd := http2.NewFramer(io.Discard, c)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var answered int
	var advertised uint32
	for answered < streams-8 {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("%d streams answered, want %d (all but the 8 the origin holds): %v", answered, streams-8, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok && !f.IsAck() {
				advertised = v
			}
		case *http2.MetaHeadersFrame:
			if st := f.PseudoValue("status"); st != "503" {
				t.Fatalf("stream %d answered %s", f.StreamID, st)
			}
			answered++
		}
	}
	if advertised != 100 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d advertised, want 100", advertised)
	}
	var atOnce, waited int
	for _, rec := range ofKind(r.records(), "http") {
		switch {
		case rec.Status != http.StatusServiceUnavailable:
		case rec.Result == "error" && strings.Contains(rec.Error, "streams in flight"):
			atOnce++
		case rec.Result == "timeout" && strings.Contains(rec.Error, "came free, and the destination sent nothing, within"):
			waited++
		default:
			t.Errorf("a 503 recorded as %q: %q", rec.Result, rec.Error)
		}
	}
	if want, wantWaited := streams-intercept.MaxStreamsInFlight, intercept.MaxStreamsInFlight-8; atOnce != want || waited != wantWaited {
		t.Errorf("503s recorded: %d at once, %d after the wait bound; want %d and %d", atOnce, waited, want, wantWaited)
	}
}

// TestH2StreamsWaitingBehindSlowOriginServed: the wait bound counts time
// in which no stream of the session got a connection, not each stream's
// own wait: an origin that answers, however slowly, keeps the queue
// moving, and streams that wait longer than the bound behind it are
// served, not refused.
func TestH2StreamsWaitingBehindSlowOriginServed(t *testing.T) {
	defer intercept.SetUpstreamWaitTimeout(300 * time.Millisecond)()
	const streams = 40 // 5 rounds of 8, each 150 ms: the last wait 600 ms
	ln := serveOrigin(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(150 * time.Millisecond) // the origin's thinking
		io.WriteString(w, "ok")
	})})
	r, first := originRig(t, ln)
	c, _ := r.connect(first, httpDest)
	cc := h2cOver(t, c, 3*waitLimit)
	defer cc.Close()
	codes := make(chan int, streams)
	start := time.Now()
	for range streams {
		go func() { codes <- h2Get(cc, "http://www.example.test/") }()
	}
	for range streams {
		select {
		case code := <-codes:
			if code != http.StatusOK {
				t.Fatalf("a stream queued behind a slow but serving origin got %d", code)
			}
		case <-time.After(2 * waitLimit):
			t.Fatal("streams not answered")
		}
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("all served in %v: no stream waited longer than the bound, the test shows nothing", d)
	}
}

// TestH2RequestBehindStreamingDownloadsServed: an honest HTTP/2 client
// downloads 8 long bodies from an HTTP/1 origin that streams them steadily
// (a byte every 50 ms, for 4 times the wait bound), and asks for a ninth
// resource meanwhile. It waits for one of the 8 connections, longer than
// the bound, and is served, not refused: the bytes the origin sends are
// the session's progress, as new connections are. (Counting only new
// connections, it got a 503 recorded as a timeout.)
func TestH2RequestBehindStreamingDownloadsServed(t *testing.T) {
	const bound = 300 * time.Millisecond
	defer intercept.SetUpstreamWaitTimeout(bound)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 8)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/small" {
			io.WriteString(w, "small")
			return
		}
		started <- struct{}{}
		for range 4 * int(bound/(50*time.Millisecond)) {
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	r, first := originRig(t, ln)
	c, _ := r.connect(first, httpDest)
	cc := h2cOver(t, c, 3*waitLimit)
	defer cc.Close()
	done := make(chan int, 8)
	for range 8 {
		go func() {
			req, _ := http.NewRequest("GET", "http://www.example.test/big", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				done <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	for range 8 {
		<-started // each of the 8 holds a connection
	}
	start := time.Now()
	req, _ := http.NewRequest("GET", "http://www.example.test/small", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "small" {
		t.Errorf("a request behind 8 downloads the origin was streaming: %d %q after %v, want 200 (bound %v)",
			resp.StatusCode, body, time.Since(start).Round(time.Millisecond), bound)
	}
	for range 8 {
		if code := <-done; code != http.StatusOK {
			t.Errorf("a download got %d", code)
		}
	}
}

// writeGet writes on fr a HEADERS frame that opens stream id with a GET
// of / at www.example.test, ending the stream, its block encoded by enc
// into hb.
func writeGet(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, scheme string) {
	hb.Reset()
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", scheme}, {":authority", "www.example.test"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
}
