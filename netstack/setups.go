package netstack

import "sync"

// setupShares share a stack's slots for connections being set up when
// they run short. A connection attempt holds one from its SYN until the
// handler accepts it (the handshake done) or rejects it: the handler dials
// the destination first, and a client that never sends its handshake's
// final ACK holds the slot for about a minute while the stack repeats its
// SYN-ACK. A few clients doing so would hold all TCPOptions.MaxInFlight
// slots, and every client of the endpoint would be refused. So once half
// the slots are taken, a client already holding its fair share (a 256th)
// gets a RST for a new attempt, and the other half is left for the others;
// until then a burst, however large, passes.
type setupShares struct {
	mu    sync.Mutex
	total int
	per   map[clientKey]int
}

// take admits an attempt of client k under a bound of capacity slots.
func (s *setupShares) take(k clientKey, capacity int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total >= capacity/2 && s.per[k] >= max(capacity/256, 1) {
		return false
	}
	if s.per == nil {
		s.per = make(map[clientKey]int)
	}
	s.per[k]++
	s.total++
	return true
}

// give returns client k's slot.
func (s *setupShares) give(k clientKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.per[k]--; s.per[k] <= 0 {
		delete(s.per, k)
	}
	s.total--
}
