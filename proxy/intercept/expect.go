package intercept

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// "Expect: 100-continue" through the appliance (RFC 9110 §10.1.1).
//
// A client that asks for a 100 before its body waits for it, and the
// origin may refuse the body with a final answer (a 401, a 413) instead.
// A proxy must not forward the body before the origin's 100, unless it
// waits in vain. The expectation goes upstream (prepareForward keeps it),
// and the body is held until the origin sends its 100, or
// expectContinueTimeout passes without an answer; a final answer first
// means the body is never sent, and the upstream connection, whose
// request is then unfinished, is not kept. The client is told "100
// Continue" at the first read of its body (goproxy's continueOnRead, on
// cleartext and bumped connections alike), so it gets its 100 only after
// the origin's: relayed, in effect, not made up.
// A client answered before that never sends the body it was not asked
// for, and the early-answer rules take over (faultBody.drainRest).
//
// Only h1Transport holds a body, with an expectGate. The session's
// http.Transport (an HTTP/2 client's, or one whose origin first spoke
// HTTP/2) is given no Expect field (oneHostTransport drops it): over an
// HTTP/1 connection net/http sends the body after an answer that came
// first and keeps the connection, and an origin that answered without
// reading it would take it for a request nothing decided. Its bodies go
// right behind their heads, as before expectations were forwarded. An
// HTTP/2 client's expectation mostly never reaches the appliance
// (net/http's HTTP/2 server removes the field and sends the 100 at the
// body's first read); one spelled so that the server passes it over is
// dropped with the rest.

// expectContinueTimeout is how long a body waits for the origin's 100
// before it is sent anyway: net/http's default ExpectContinueTimeout, and
// curl's own wait. An origin that ignores the expectation (an HTTP/1.0
// one) costs an upload that long.
var expectContinueTimeout = newDuration(1 * time.Second) // set by tests, read by sessions: atomic

// errExpectRefused ends the writing of a request whose origin answered
// before it asked for the body: the body is not sent.
var errExpectRefused = errors.New("the destination answered before asking for the request body: not sent")

// expectsContinue reports whether req, with a body, asks for a 100
// before it, as net/http's servers read the field (only spaces and tabs
// around the token): a spelling they pass over is no expectation here
// either, and prepareForward drops it.
func expectsContinue(req *http.Request) bool {
	return !bodyless(req) && req.ProtoAtLeast(1, 1) && httpguts.HeaderValuesContainsToken(req.Header["Expect"], "100-continue")
}

// expectGate holds a request body until the origin decides: its first
// Read waits for decide, or expectContinueTimeout, or the request's end.
type expectGate struct {
	io.ReadCloser
	ctx     context.Context
	decided chan struct{} // closed by decide
	once    sync.Once
	send    bool // set before decided is closed
	waited  bool // the first Read's wait is over (the writer's alone)
}

// newExpectGate returns a gate on body, for a request whose context is
// ctx.
func newExpectGate(ctx context.Context, body io.ReadCloser) *expectGate {
	return &expectGate{ReadCloser: body, ctx: ctx, decided: make(chan struct{})}
}

// decide lets the body go (send: the origin sent its 100) or keeps it
// back for good (an answer came first, or the exchange failed); the first
// call counts. Safe on a nil gate.
func (g *expectGate) decide(send bool) {
	if g == nil {
		return
	}
	g.once.Do(func() {
		g.send = send
		close(g.decided)
	})
}

// refused reports whether the body was kept back for good. Safe on a nil
// gate.
func (g *expectGate) refused() bool {
	if g == nil {
		return false
	}
	select {
	case <-g.decided:
		return !g.send
	default:
		return false
	}
}

// Close closes the body if the gate let it go. One kept back (the origin
// answered first, or the exchange failed before its 100) is not closed
// here: nothing of it was read, and it stays the transport's, which may
// send it on a new connection (h1Transport.RoundTrip) or closes it.
// net/http closes a request body when it stops writing it, as early as a
// failed write of the head: closing the client's body then would have cut
// a client connection whose request could still go.
func (g *expectGate) Close() error {
	g.decide(false)
	if g.send {
		return g.ReadCloser.Close()
	}
	return nil
}

func (g *expectGate) Read(p []byte) (int, error) {
	if !g.waited {
		g.waited = true
		t := time.NewTimer(expectContinueTimeout.Load())
		select {
		case <-g.decided:
		case <-t.C:
			g.decide(true) // no word from the origin: the body goes
		case <-g.ctx.Done():
			g.decide(false)
		}
		t.Stop()
		<-g.decided
		if !g.send {
			return 0, errExpectRefused
		}
	} else if !g.send {
		return 0, errExpectRefused
	}
	return g.ReadCloser.Read(p)
}
