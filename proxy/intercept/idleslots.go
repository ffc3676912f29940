package intercept

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// Idle HTTP/2 connections and the session's upstream slots.
//
// An HTTP/2 upstream connection holds its slot until it closes
// (countedConn.holdSlot), and net/http closes one with no streams only
// when its idle timer (IdleConnTimeout, 90 s) fires. net/http drops an
// HTTP/2 connection from its own pool once a request found it full, and
// dials for that request; the connection stays in the HTTP/2 transport's
// pool, open, but nothing hands it to a request already waiting for its
// dial once its streams end. Against an origin that allows one stream a
// connection (SETTINGS_MAX_CONCURRENT_STREAMS 1), a client's streams
// opened together filled maxUpstreamConns connections, and the streams
// beyond them waited, their dials waiting for a slot, while all of them
// sat idle: up to 90 s. So a dial that finds no slot free has the
// transport close its idle connections (CloseIdleConnections: the HTTP/2
// transport closes only a connection with no stream and none reserved,
// under the connection's own lock, so a request about to take one never
// loses it), and, since net/http tells nothing when an HTTP/2 connection
// falls idle, again every idleSlotCheck while it waits. A closed
// connection's slot goes to the waiting dial.
//
// That closes every idle connection of the session, not just one: net/http
// offers nothing finer. A dial waits for a slot only when the session holds
// maxUpstreamConns connections, which an origin that allows many streams a
// connection never makes it open; a connection it closes so is one net/http
// had dropped (found full) or one no stream used.

// idleSlotCheck is how often a dial waiting for a slot has the session's
// idle upstream connections closed; the session's waiting dials together
// have it done at most this often.
const idleSlotCheck = 50 * time.Millisecond

// idleCloser closes a transport's idle connections (closeIdle) for the
// dials waiting for a slot, at most once every idleSlotCheck.
type idleCloser struct {
	closeIdle func()
	last      atomic.Int64 // UnixNano of the last close; 0 before it
}

// maybeClose closes the idle connections, unless that was done within
// idleSlotCheck.
func (c *idleCloser) maybeClose() {
	now := time.Now().UnixNano()
	last := c.last.Load()
	if last != 0 && now-last < int64(idleSlotCheck) || !c.last.CompareAndSwap(last, now) {
		return
	}
	c.closeIdle()
}

// takeSlotClosingIdle is takeSlot (connset.go) for a transport whose
// connections may be HTTP/2: while no slot is free it has idle's
// connections closed, at once and then every idleSlotCheck (none when
// idle is nil).
func (s *connSet) takeSlotClosingIdle(ctx context.Context, reqDone <-chan struct{}, idle *idleCloser) (*connSlot, error) {
	var (
		tick  *time.Ticker // once the dial waits
		ticks <-chan time.Time
	)
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, errSetEnded
		}
		if s.open < maxUpstreamConns {
			s.open++
			s.mu.Unlock()
			return &connSlot{set: s}, nil
		}
		if s.freed == nil {
			s.freed = make(chan struct{})
		}
		freed := s.freed
		s.mu.Unlock()
		if idle != nil {
			if tick == nil {
				tick = time.NewTicker(idleSlotCheck)
				ticks = tick.C
			}
			// Outside mu: a connection's Close releases its slot under it.
			idle.maybeClose()
		}
		select {
		case <-freed:
		case <-ticks:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for one of %d upstream connections to close: %w", maxUpstreamConns, context.Cause(ctx))
		case <-reqDone:
			return nil, fmt.Errorf("waiting for one of %d upstream connections to close: the request ended", maxUpstreamConns)
		}
	}
}
