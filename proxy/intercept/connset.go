package intercept

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// connSet holds open connections until they close, or until closeAll.
// It also counts the connections of the session's http.Transport that
// are really open, against maxUpstreamConns (takeSlot).
type connSet struct {
	mu     sync.Mutex
	conns  map[*setConn]struct{}
	closed bool
	// open: the slots taken and not yet released (connSlot).
	open int
	// freed, while a dial waits for a slot, is closed (and cleared) when
	// one is released or the set ends.
	freed chan struct{}
}

type setConn struct {
	net.Conn
	set     *connSet
	unwatch func() // Session.WatchUpstream's, if any
	// verifyErr is the failure of its certificate's verification that the
	// rule accepted (redial.go); set before the transport has it.
	verifyErr error
}

// add tracks c, or closes it if the set is closed already; unwatch, if
// not nil, is called once c closes.
func (s *connSet) add(c net.Conn, unwatch func()) (net.Conn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		// Outside the lock, as setConn.Close does: unwatch takes the
		// watch's lock, which a stall holds while it aborts this set.
		c.Close()
		if unwatch != nil {
			unwatch()
		}
		return nil, errors.New("the client connection has ended")
	}
	if s.conns == nil {
		s.conns = make(map[*setConn]struct{})
	}
	sc := &setConn{Conn: c, set: s, unwatch: unwatch}
	s.conns[sc] = struct{}{}
	s.mu.Unlock()
	return sc, nil
}

func (c *setConn) Close() error {
	c.set.mu.Lock()
	delete(c.set.conns, c)
	c.set.mu.Unlock()
	err := c.Conn.Close()
	if c.unwatch != nil {
		c.unwatch() // safe more than once
	}
	return err
}

// closeAll closes every connection, and any added later.
func (s *connSet) closeAll() { s.end(false) }

// abortAll resets every connection, and closes any added later.
func (s *connSet) abortAll() { s.end(true) }

func (s *connSet) end(abort bool) {
	s.mu.Lock()
	s.closed = true
	s.wakeLocked() // a dial waiting for a slot fails: the session has ended
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for c := range conns {
		if abort {
			Abort(c.Conn)
		} else {
			c.Conn.Close()
		}
	}
}

// Upstream slots. http.Transport's MaxConnsPerHost counts a connection
// until net/http closes what it knows as the connection; a response with
// faulty framing (h1framing.go) is told its request ended, so net/http
// closes it (which, held, closes nothing) and counts it no more, while its
// body still reads the real connection. An origin answering every request
// of an HTTP/2 client's streams so, and holding each body open, had one
// upstream connection per stream (up to goproxy's 250), not
// maxUpstreamConns. So the transport's dials take a slot first, and a
// connection gives it back when it really closes: while
// maxUpstreamConns are open a dial waits, as the streams beyond the
// bound wait in net/http's queue, rather than fail: net/http counts a
// connection down before it closes it, so an honest stream's dial may
// come in between, and a refusal would have been its 502. An HTTP/2
// upstream connection holds its slot the same way (countedConn.holdSlot):
// net/http also stops counting one full of streams it reset, whose PING
// the origin never acked, and keeps it open.

// connSlot is one connection's place among the maxUpstreamConns a
// session's http.Transport holds open.
type connSlot struct {
	set  *connSet
	done atomic.Bool
}

// errSetEnded fails a dial that comes, or waits, after the session ended.
var errSetEnded = errors.New("the client connection has ended")

// takeSlot returns a slot for a connection about to be dialled, once
// fewer than maxUpstreamConns are held; it waits for one to be released
// until ctx (the dial's) or reqDone (the request's, nil if none) ends, or
// the set does.
func (s *connSet) takeSlot(ctx context.Context, reqDone <-chan struct{}) (*connSlot, error) {
	return s.takeSlotClosingIdle(ctx, reqDone, nil)
}

// release gives the slot back, once; sl may be nil.
func (sl *connSlot) release() {
	if sl == nil || !sl.done.CompareAndSwap(false, true) {
		return
	}
	s := sl.set
	s.mu.Lock()
	s.open--
	s.wakeLocked()
	s.mu.Unlock()
}

// wakeLocked wakes the dials waiting for a slot; under mu.
func (s *connSet) wakeLocked() {
	if s.freed != nil {
		close(s.freed)
		s.freed = nil
	}
}
