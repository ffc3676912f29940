package proxy

import (
	"fmt"
	"sync"
	"time"
)

// Stalled handshakes. The appliance dials the destination, then completes
// the client's handshake; until the client's final ACK, the connection
// holds one of its endpoint stack's slots for connections being set up
// (netstack's TCPOptions.MaxInFlight, 16,384), and a client that never
// sends that ACK holds it for about a minute while the stack repeats its
// SYN-ACK. A few clients doing so would hold every slot, for every client
// of the endpoint. A real handshake ends within a round trip, so one still
// waiting after stalledHandshakeAfter counts as stalled, and a client with
// its limit of stalled handshakes gets a RST for any new connection,
// before anything is dialled. Bursts of real connections, however large,
// are not refused: only handshakes that have stalled count.
const (
	// DefaultMaxStalledHandshakesPerClient is the default of
	// Config.MaxStalledHandshakesPerClient: 256 clients at it to fill a
	// stack's slots.
	DefaultMaxStalledHandshakesPerClient = 64
	stalledHandshakeAfter                = 3 * time.Second
)

type stalledHandshakes struct {
	mu sync.Mutex
	m  map[shareKey]*stallEntry // clients with stalled handshakes
}

type stallEntry struct {
	stalled    int
	recorded   time.Time // when a refusal was last recorded
	unrecorded int       // refusals since then
}

// check reports whether client k may start another connection: not while
// it has limit handshakes stalled. A refusal comes with a reason to record
// it by, at most every shareRecordEvery per client ("": no record), as a
// client's shares do.
func (s *stalledHandshakes) check(k shareKey, limit int, now time.Time) (ok bool, record string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[k]
	if e == nil || e.stalled < limit {
		return true, ""
	}
	if now.Sub(e.recorded) < shareRecordEvery {
		e.unrecorded++
		return false, ""
	}
	record = fmt.Sprintf("the client has %d TCP handshakes it has not completed for %s", e.stalled, stalledHandshakeAfter)
	if e.unrecorded > 0 {
		record += fmt.Sprintf("; %d more new connections refused since the last such record", e.unrecorded)
	}
	e.recorded, e.unrecorded = now, 0
	return false, record
}

// watch counts client k's handshake, begun now, as stalled once it has
// waited stalledHandshakeAfter; the returned end, called when the
// handshake ends, takes it off the count.
func (s *stalledHandshakes) watch(k shareKey) (end func()) {
	var counted, ended bool // under s.mu
	t := time.AfterFunc(stalledHandshakeAfter, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if ended {
			return
		}
		counted = true
		if s.m == nil {
			s.m = make(map[shareKey]*stallEntry)
		}
		e := s.m[k]
		if e == nil {
			e = &stallEntry{}
			s.m[k] = e
		}
		e.stalled++
	})
	return func() {
		t.Stop()
		s.mu.Lock()
		defer s.mu.Unlock()
		ended = true
		if !counted {
			return
		}
		if e := s.m[k]; e != nil {
			if e.stalled--; e.stalled <= 0 {
				delete(s.m, k)
			}
		}
	}
}

func (p *Proxy) stalledLimit() int {
	if n := p.cfg.MaxStalledHandshakesPerClient; n > 0 {
		return n
	}
	return DefaultMaxStalledHandshakesPerClient
}
