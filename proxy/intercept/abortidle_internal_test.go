package intercept

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// AbortUnlessIdle leaves a session between requests be (a stream the
// server refused is no request under way), aborts one with a request in
// flight or a stream yet to reach RoundTrip, and a request
// that starts after it left one be aborts the session then, with what it
// was told: the client that reset has no answer to wait for.
func TestAbortUnlessIdle(t *testing.T) {
	broke := errors.New("the client's connection broke: operation aborted")
	newRT := func() *roundTripper {
		client, other := net.Pipe()
		t.Cleanup(func() { client.Close(); other.Close() })
		s := &session{
			Session: &Session{Client: client, Record: &records.Record{Kind: "tls"}, Start: time.Now(), Done: func() {}},
			ic:      New(Config{}),
		}
		rt := &roundTripper{s: s, tr: noTransport{}, cc: &hijackedConn{}}
		s.serving.Store(rt)
		return rt
	}
	abortedWith := func(rt *roundTripper) error {
		if a := rt.s.aborted.Load(); a != nil && a != ending {
			return a.err
		}
		return nil
	}

	t.Run("between requests, then a request", func(t *testing.T) {
		rt := newRT()
		if rt.s.AbortUnlessIdle("reset", broke) || abortedWith(rt) != nil {
			t.Fatal("a session between requests was aborted")
		}
		// A request goproxy read before the reset: RoundTrip aborts. (No
		// Host: it is answered 400 without a dial.)
		req := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/"}, Header: http.Header{}, Body: http.NoBody}
		if resp, _ := rt.RoundTrip(req, nil); resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err := abortedWith(rt); err != broke {
			t.Fatalf("a request that started after the client's reset left the session running (aborted with %v)", err)
		}
	})
	t.Run("request in flight", func(t *testing.T) {
		rt := newRT()
		rt.inflight.Add(1)
		if !rt.s.AbortUnlessIdle("reset", broke) || abortedWith(rt) != broke {
			t.Fatal("a session with a request in flight was left be")
		}
	})
	t.Run("stream yet to reach RoundTrip", func(t *testing.T) {
		rt := newRT()
		rt.cc.limit.unanswered.open(1, false)
		rt.cc.limit.streams.Store(1)
		if !rt.s.AbortUnlessIdle("reset", broke) || abortedWith(rt) != broke {
			t.Fatal("a session with a stream opened and no request yet was left be")
		}
	})
	t.Run("stream the server refused", func(t *testing.T) {
		// Opened, and reset by the server (RST_STREAM, no handler): it
		// never reaches RoundTrip, and the client has its answer.
		rt := newRT()
		rt.cc.limit.unanswered.open(1, false)
		rt.cc.limit.streams.Store(1)
		rt.cc.limit.unanswered.answered(1)
		if rt.s.AbortUnlessIdle("reset", broke) || abortedWith(rt) != nil {
			t.Fatal("a session whose only stream the server refused was aborted")
		}
	})
	t.Run("not serving requests yet", func(t *testing.T) {
		rt := newRT()
		rt.s.serving.Store(nil) // a handshake, a dial under way
		if !rt.s.AbortUnlessIdle("reset", broke) || abortedWith(rt) != broke {
			t.Fatal("a session that serves no requests yet was left be")
		}
	})
}

// AbortNoting calls its note once, on the call that aborts, before the
// client is reset: a stall counted there is counted before the session's
// records of it can be written.
func TestAbortNotingNotesFirst(t *testing.T) {
	client, other := net.Pipe()
	defer other.Close()
	s := &Session{Client: client, Record: &records.Record{Kind: "tls"}, Start: time.Now(), Done: func() {}}
	var notes int
	var clientOpen bool
	note := func() {
		notes++
		clientOpen = client.SetDeadline(time.Now().Add(time.Second)) == nil
	}
	if !s.AbortNoting("stalled", errors.New("stalled"), note) {
		t.Fatal("the first AbortNoting did not abort")
	}
	if s.AbortNoting("stalled", errors.New("again"), note) {
		t.Fatal("a second AbortNoting aborted again")
	}
	if notes != 1 || !clientOpen {
		t.Fatalf("note called %d times, the client open then: %v; want once, before the client was reset", notes, clientOpen)
	}
	if client.SetDeadline(time.Now()) == nil {
		t.Fatal("the client was not reset by the abort")
	}
}
