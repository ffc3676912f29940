package intercept

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A stream can be counted after connClosed has looked: hijackedConn.Read
// stores headLimit.streams once the underlying Read has returned, and a
// tls.Conn can hand out plaintext it buffered after Close. Such a stream
// raises streams with no request to match, and the session must still
// end, once h2HandlerGrace is over: before, the grace's timer was armed
// only by connClosed, and only if a stream was waiting then, so the
// session (one request in flight, its stream counted, the connection
// closed) waited for the late stream's request for good after the
// request ended: no Done, no tls record, the session's slot kept. The
// steps run in the order of that interleaving, on one goroutine.
func TestH2LateStreamAfterCloseEnds(t *testing.T) {
	for _, late := range []bool{true, false} {
		t.Run(map[bool]string{true: "counted after the close", false: "counted before"}[late], func(t *testing.T) {
			done := make(chan struct{})
			s := &session{
				Session: &Session{Record: &records.Record{Kind: "tls"}, Start: time.Now(), Done: func() { close(done) }},
				ic:      New(Config{}),
			}
			rt := &roundTripper{s: s, tr: noTransport{}, cc: &hijackedConn{}}
			rt.cc.limit.streams.Store(1)
			rt.inflight.Add(1) // a request, its stream's, under way
			rt.requests.Add(1)
			if !late {
				rt.cc.limit.streams.Store(2)
			}
			rt.connClosed()
			if late {
				rt.cc.limit.streams.Store(2) // the Read that counts it returns now
			}
			rt.requestDone()
			last := time.Now()
			select {
			case <-done:
				t.Fatal("the session ended before the late stream's grace")
			case <-time.After(h2HandlerGrace / 2):
			}
			select {
			case <-done:
			case <-time.After(h2HandlerGrace + time.Second):
				t.Fatalf("the session has not ended %v after its last request, a stream counted but never started", time.Since(last).Round(time.Millisecond))
			}
		})
	}
}

// noTransport is an upstreamTransport with nothing to close.
type noTransport struct{}

func (noTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, errors.New("none") }
func (noTransport) CloseIdleConnections()                           {}
func (noTransport) roundTripRechecked(*http.Request, *tunnelReload) (*http.Response, error) {
	return nil, errors.New("none")
}
