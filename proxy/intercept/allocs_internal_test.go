//go:build !race

package intercept

import (
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"

	"github.com/elazarl/goproxy"
	"golang.org/x/net/http2"
)

// The race detector allocates on its own: these counts hold without it.

// TestHostParsingAllocatesNothing: deciding a request on an ordinary Host
// (a name, with or without a port) allocates nothing; SplitHostPort's and
// netip.ParseAddr's errors for a name were three allocations per request.
func TestHostParsingAllocatesNothing(t *testing.T) {
	for _, host := range []string{"www.example.test", "www.example.test:8443", "192.0.2.1", "[2001:db8::1]:443"} {
		if n := testing.AllocsPerRun(100, func() {
			canon, err := canonicalHost(host)
			if err != nil {
				t.Fatal(err)
			}
			_ = hostOnly(canon)
		}); n != 0 {
			t.Errorf("%s: %v allocations, want 0", host, n)
		}
	}
}

// TestCountingReaderReadAllocatesNothing: a read of a request body that
// succeeds allocates nothing; the error's address, taken for the first
// failure, had moved every read's error to the heap.
func TestCountingReaderReadAllocatesNothing(t *testing.T) {
	body := strings.NewReader(strings.Repeat("x", 1<<20))
	c := &countingReader{r: io.NopCloser(body)}
	b := make([]byte, 512)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := c.Read(b); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per read, want 0", n)
	}
}

// TestFramingConnReadAllocatesNothing: a read of an upstream HTTP/1
// connection allocates nothing; the error's address, taken while a faulty
// response holds the connection, had moved every read's error to the heap.
func TestFramingConnReadAllocatesNothing(t *testing.T) {
	c := &framingConn{Conn: endlessConn{}}
	b := make([]byte, 512)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := c.Read(b); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per read, want 0", n)
	}
}

// TestFaultBodyNoteAllocatesNothing: noting a read's or a close's nil
// error allocates nothing; it was one allocation per request body.
func TestFaultBodyNoteAllocatesNothing(t *testing.T) {
	b := &faultBody{}
	if n := testing.AllocsPerRun(100, func() { b.note(nil) }); n != 0 {
		t.Errorf("%v allocations per note, want 0", n)
	}
}

// endlessConn is a net.Conn whose reads always fill the buffer.
type endlessConn struct{ net.Conn }

func (endlessConn) Read(b []byte) (int, error) { return len(b), nil }

// TestOneHostRoundTripAllocations: what oneHostTransport.RoundTrip adds
// to a request on its way to http.Transport (here a stub that reports a
// connection and the response's first byte, and answers at once). It was
// 14 allocations; the request's URL, its trace and the context value
// naming its headDeadline are one with the headDeadline now, and the
// channel saying it got a connection is made only for a dial that waits
// for it. What is left (11): the headDeadline, its context
// (WithCancelCause's two), the trace's context value and its four hooks
// (GetConn since bf2792a: net/http asking again for a connection tells a
// retry's dial from a first one), the request's copy, and the HTTP/1 head
// timer with its function.
func TestOneHostRoundTripAllocations(t *testing.T) {
	tr := &http.Transport{}
	tr.RegisterProtocol("stub", tracedStub{}) // not https: net/http's own HTTP/2 takes that
	ot := oneHostTransport{Transport: tr, host: "www.example.test"}
	req, err := http.NewRequest("GET", "stub://WWW.example.test/p", nil)
	if err != nil {
		t.Fatal(err)
	}
	n := testing.AllocsPerRun(100, func() {
		if _, err := ot.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
	})
	const want = 11
	if n > want {
		t.Errorf("%v allocations per round trip, want at most %d", n, want)
	}
}

// tracedStub is an upstream transport that reports a counted HTTP/1
// connection and the response's first byte, and answers 200 at once.
type tracedStub struct{}

var (
	stubConn = &countedConn{Conn: endlessConn{}, n: &byteCount{}}
	stubResp = &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}
)

func (tracedStub) RoundTrip(r *http.Request) (*http.Response, error) {
	trace := httptrace.ContextClientTrace(r.Context())
	trace.GotConn(httptrace.GotConnInfo{Conn: stubConn})
	trace.GotFirstResponseByte()
	return stubResp, nil
}

// TestH2HeadStartAllocatesNothing: an HTTP/2 response's first byte, which
// net/http reports once its header list is whole, arms no head timer:
// there is no rest of the head to time, and the timer and its function
// were two allocations per request.
func TestH2HeadStartAllocatesNothing(t *testing.T) {
	d := &headDeadline{h2: true, cancel: func(error) {}}
	if n := testing.AllocsPerRun(100, func() {
		d.start()
		if d.timer != nil {
			d.timer.Stop()
			d.timer = nil
		}
	}); n != 0 {
		t.Errorf("%v allocations per first byte, want 0", n)
	}
}

// TestUpstreamWaitAllocatesNothing: a request's wait for an upstream
// connection, bounded and then ended by the connection, allocates
// nothing: the session's waits share one timer. A timer and its function
// per request were two allocations.
func TestUpstreamWaitAllocatesNothing(t *testing.T) {
	w := newUpstreamWait(func() int64 { return 0 })
	d := &headDeadline{cancel: func(error) {}}
	if n := testing.AllocsPerRun(100, func() {
		d.startWait(w)
		d.gotConnection()
		d.endWait()
	}); n != 0 {
		t.Errorf("%v allocations per wait, want 0", n)
	}
}

// TestNoteH2StreamAllocatesNothing: the request filter that takes up an
// HTTP/2 stream's note (what ended the stream, for its record) hands it
// to RoundTrip on goproxy's ProxyCtx, and passes the request on as it
// came: no allocation. It put the note in a context value on a copy of
// the request, two allocations for every HTTP/2 request (review rev30b
// F5).
func TestNoteH2StreamAllocatesNothing(t *testing.T) {
	rt := &roundTripper{cc: &hijackedConn{}}
	rt.cc.limit.unanswered.open(1, true) // x/net's first stream
	srv, cli := net.Pipe()
	defer cli.Close()
	type result struct {
		allocs float64
		same   bool
		note   *h2StreamNote
	}
	got := make(chan result, 1)
	go (&http2.Server{}).ServeConn(srv, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pctx := &goproxy.ProxyCtx{RoundTripper: rt}
		var out *http.Request
		n := testing.AllocsPerRun(100, func() { out, _ = noteH2Stream(r, pctx) })
		got <- result{n, out == r, h2StreamNoteOf(pctx)}
	})})
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(cli)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://x/", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	res := <-got
	if res.note == nil || res.note.id != 1 {
		t.Fatalf("the note handed on: %+v, want stream 1's", res.note)
	}
	if res.allocs != 0 || !res.same {
		t.Errorf("%v allocations, the request passed on as it came: %v; want none, and the same request", res.allocs, res.same)
	}
}
