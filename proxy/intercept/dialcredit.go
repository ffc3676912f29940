package intercept

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
)

// Dials that other requests took, or that net/http dropped unused.
//
// maxConnsPerRequest counts the connections dialled for a request, to
// bound the dials of one an origin refuses on every connection. But an
// HTTP/2 connection net/http dials for one request goes to every request
// then waiting for one, and the first to reserve a stream on it has it;
// and net/http closes a new HTTP/2 connection unused when its pool has
// one that can take a request already. Against an origin that allows one
// stream a connection, a request's dials could each bring a connection
// another request took, or one net/http dropped, and its fourth dial was
// refused: a 502 (1 to 8 of 20 streams opened together, in the review's
// runs and this fix's), though the origin answered every stream it took.
// So a connection dialled for one request gives that request its count
// back when another request takes it (GotConn), or when it closes
// unused (no read after its handshake: net/http never made it an HTTP/2
// connection); and one another request took takes the count again if it
// closes having answered no request, as every connection of an origin
// that refuses every request does. The counts given back and not taken
// again are those of open connections, which maxUpstreamConns bounds,
// so the dials of one request against such an origin stay bounded.

// dialCredit is what a counted connection knows of the request it was
// dialled for.
type dialCredit struct {
	// dialledFor: the request it was dialled for, if one of
	// oneHostTransport's.
	dialledFor atomic.Pointer[headDeadline]
	// givenBack: dialledFor's count for it is given back.
	givenBack atomic.Bool
	// answered: its origin answered a request on it.
	answered atomic.Bool
	// ready: its handshake is done (handshaken); read: it was read since.
	ready, read atomic.Bool
}

// dialledFor counts the connection c, just made, for the request whose
// dial's context (net/http's: the request's values) is ctx, if it is one
// of oneHostTransport's (newConnFor), and notes that request on c.
func dialledFor(ctx context.Context, c net.Conn) {
	hd, ok := ctx.Value(headDeadlineKey{}).(*headDeadline)
	if !ok {
		return
	}
	hd.dials.Add(1)
	if cc := countedUnder(c); cc != nil {
		cc.credit.dialledFor.Store(hd)
	}
}

// handshaken notes that c's TLS handshake is done: a read from now on is
// net/http's, reading it as an HTTP/2 connection.
func (c *countedConn) handshaken() {
	c.credit.read.Store(false)
	c.credit.ready.Store(true)
}

// noteRead notes a read of c (countedConn.Read).
func (c *countedConn) noteRead() {
	if !c.credit.read.Load() {
		c.credit.read.Store(true)
	}
}

// takenBy notes that the request d got c (httptrace's GotConn): when d is
// not the request c was dialled for, that one gets its count back, once.
// c may be nil.
func (c *countedConn) takenBy(d *headDeadline) {
	if c == nil {
		return
	}
	if hd := c.credit.dialledFor.Load(); hd != nil && hd != d {
		c.giveBack()
	}
}

// giveBack gives the request c was dialled for its count back, once; c
// may be nil.
func (c *countedConn) giveBack() {
	if c == nil {
		return
	}
	if hd := c.credit.dialledFor.Load(); hd != nil && c.credit.givenBack.CompareAndSwap(false, true) {
		hd.dials.Add(-1)
	}
}

// answeredOn notes that c's origin answered a request on it (its first
// response byte); c may be nil.
func (c *countedConn) answeredOn() {
	if c != nil {
		c.credit.answered.Store(true)
	}
}

// creditOnClose settles the count of the request c was dialled for, as
// c closes: given back if net/http never used c, taken again if another
// request took it and its origin answered none.
func (c *countedConn) creditOnClose() {
	cr := &c.credit
	hd := cr.dialledFor.Load()
	switch {
	case hd == nil:
	case cr.ready.Load() && !cr.read.Load():
		c.giveBack()
	case !cr.answered.Load() && cr.givenBack.CompareAndSwap(true, false):
		hd.dials.Add(1)
	}
}

// dialStart lets a dial of the request go on (dialing) while the
// connections that count for it and its dials under way stay below
// maxConnsPerRequest; else it waits for one under way to end, or for the
// request or ctx to. It fails with errRefusedTooOften once as many count.
func (d *headDeadline) dialStart(ctx context.Context) error {
	d.mu.Lock()
	for {
		n := d.dials.Load()
		if n >= maxConnsPerRequest {
			d.mu.Unlock()
			return errRefusedTooOften
		}
		if n+int32(d.dialing) < maxConnsPerRequest {
			d.dialing++
			d.mu.Unlock()
			return nil
		}
		if d.dialDone == nil {
			d.dialDone = make(chan struct{})
		}
		ended := d.dialDone
		d.mu.Unlock()
		select {
		case <-ended:
		case <-d.reqDone:
			return fmt.Errorf("waiting for another dial of the request: the request ended")
		case <-ctx.Done():
			return fmt.Errorf("waiting for another dial of the request: %w", context.Cause(ctx))
		}
		d.mu.Lock()
	}
}

// dialEnded ends a dial dialStart let through, and wakes those waiting
// for one to end; d may be nil.
func (d *headDeadline) dialEnded() {
	if d == nil {
		return
	}
	d.mu.Lock()
	d.dialing--
	if d.dialDone != nil {
		close(d.dialDone)
		d.dialDone = nil
	}
	d.mu.Unlock()
}
