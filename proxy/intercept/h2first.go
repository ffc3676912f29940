package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The first HTTP/2 upstream connection's take-up.
//
// net/http learns that a connection is HTTP/2, and so shared, only once
// it has it: a request that comes while the session's first connection is
// being taken up (its HTTP/2 preface written, before it is in net/http's
// pool) waits for it and has a dial of its own started too, which serves
// it if it ends first. A client opens its first streams together, so a
// session dialled, handshook and verified up to maxUpstreamConns-1 more
// connections, each counted against the dial pace, that net/http then
// closed unused; and a dial that failed (a destination that takes one
// connection from a client, or a dial that timed out) had its stream
// answered 502 though the first connection was about to carry it.
//
// The session's first connection is HTTP/2 from its handshake. So while
// it is taken up, and no request has got it, another dial waits: for its
// own request to get a connection (the first one, from the pool: the dial
// is not needed), for the first connection to close (its take-up failed:
// the dial goes ahead), for its request to end, or for firstTakeUpWait.
// So does a dial that comes once a request has got the first connection,
// for a request that came before: net/http hands the first connection to
// the requests waiting for one only after the one it was dialled for has
// it, and dialled for each that queued in between (up to 7 further
// connections for 20 streams on a loaded machine, each closed unused). A
// dial for a request that came once a request had the first connection
// goes ahead at once: net/http's pool had it then, and dials only for a
// request none of its connections could take (an origin that allows few
// streams a connection). So does a dial for a request net/http asks a
// connection for again (a retry): the one it was handed, such as the
// first one full, could not carry it.

// firstTakeUp is the take-up of a session's first connection, an HTTP/2
// one; nil (no first connection, or not HTTP/2) holds back no dial.
type firstTakeUp struct {
	first  net.Conn
	closed chan struct{} // closed once the first connection is

	mu sync.Mutex
	// handedOut: a dial has gone ahead to take the first connection.
	handedOut bool
	// up: a request has got the first connection.
	up bool
}

// firstTakeUpWait bounds a dial's wait for the first connection: a take-up
// ends within a round trip, but a first connection no request ever gets
// (its origin sent a GOAWAY, or allowed no streams, before any request
// had it) would hold every other dial until the connection closed, 90 s
// idle. Past the bound the dial goes ahead, as it did before the wait.
// Tests that hold a take-up on purpose lengthen it, so that only the
// first connection ends their dials' waits (set by tests while sessions
// read it: atomic).
var firstTakeUpWait = newDuration(time.Second)

// testHookTakeUpBound, when set, runs as a dial's wait for the first
// connection ends at firstTakeUpWait.
var testHookTakeUpBound atomic.Pointer[func()]

// errDialNotNeeded ends a dial whose request got a connection while it
// waited; net/http drops it, its request served already.
var errDialNotNeeded = errors.New("the request got a connection while its dial waited for the first one")

// newFirstTakeUp returns first's take-up, or nil when first is not an
// HTTP/2 connection the session counts (countedConn, which tells when it
// closes).
func newFirstTakeUp(first net.Conn) *firstTakeUp {
	if tc, ok := first.(*tls.Conn); !ok || tc.ConnectionState().NegotiatedProtocol != "h2" {
		return nil
	}
	cc := countedUnder(first)
	if cc == nil {
		return nil
	}
	g := &firstTakeUp{first: first, closed: make(chan struct{})}
	cc.whenClosed(func() { close(g.closed) })
	return g
}

// wait returns once the dial whose context (net/http's: the request's
// values, not its cancellation) is ctx may go ahead; errDialNotNeeded if
// its request got a connection meanwhile.
func (g *firstTakeUp) wait(ctx context.Context) error {
	if g == nil {
		return nil
	}
	hd, _ := ctx.Value(headDeadlineKey{}).(*headDeadline)
	g.mu.Lock()
	if !g.handedOut || hd.retrying() || g.up && !hd.mayGetFirst() {
		g.handedOut = true // the first dial takes the first connection
		g.mu.Unlock()
		return nil
	}
	g.mu.Unlock()
	var got, reqDone <-chan struct{}
	if hd != nil {
		got, reqDone = hd.gotChan(), hd.reqDone
	}
	bound := time.NewTimer(firstTakeUpWait.Load())
	defer bound.Stop()
	select {
	case <-got:
		return errDialNotNeeded
	case <-g.closed:
		return nil
	case <-bound.C:
		if h := testHookTakeUpBound.Load(); h != nil {
			(*h)()
		}
		return nil // a first connection no request gets (a GOAWAY, no streams allowed)
	case <-reqDone:
		return errors.New("waiting for the first upstream connection: the request ended")
	case <-ctx.Done():
		return fmt.Errorf("waiting for the first upstream connection: %w", context.Cause(ctx))
	}
}

// retrying reports whether net/http has asked for a connection for the
// request d before and it has got none: the one it was handed could not
// carry it. Handed a full HTTP/2 connection (the first one, from an origin
// allowing one stream a connection), a request got none as httptrace
// tells it (GotConn), so a wait for got would hold its retry's dial the
// whole firstTakeUpWait. (net/http's HTTP/2 pool also asks as it hands a
// request a connection it then gets at once: not a retry.)
func (d *headDeadline) retrying() bool {
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.asked > 1 && !d.gotClosed
}

// mayGetFirst reports whether the request d may yet be handed the first
// connection from net/http's pool: it came before a request had it, and
// has had no connection (one that has is dialling for a retry, such as
// a stream its origin refused).
func (d *headDeadline) mayGetFirst() bool {
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.beforeFirstUp && !d.gotClosed
}

// askedConn notes that net/http asks for a connection for the request d
// (httptrace's GetConn): a second ask with none got is a retry.
func (d *headDeadline) askedConn(string) {
	d.mu.Lock()
	d.asked++
	d.mu.Unlock()
}

// isUp reports whether a request has got the first connection; true with
// no first connection to wait for.
func (g *firstTakeUp) isUp() bool {
	if g == nil {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.up
}

// gotConn notes that a request got c: once it is the first connection,
// the take-up is over.
func (g *firstTakeUp) gotConn(c net.Conn) {
	if g == nil || c != g.first {
		return
	}
	g.mu.Lock()
	g.up = true
	g.mu.Unlock()
}
