package capture

import (
	"sync"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// The synthesized stream's client port.
//
// It is the client's real port with its top bit flipped (PlaintextPortFlip),
// unless that 5-tuple is taken: by a flow in the flow table (a client may
// open a wire connection from the flipped port to the same destination,
// honestly or to garble the IDS's view of its bumped one), or by another
// synthesized stream still open. Then the next ports of the same half are
// tried in turn, up to plainPortTries of them, and the first free one is
// used. When all are taken the flipped port is used anyway and the
// collision counted (plaintext.collisions): a stream that shares a wire
// flow's 5-tuple still stands apart for a reader that keys on the VLAN or
// the pcap interface, where a stream not written would hide the
// connection's decrypted side from every reader, and a client can make
// thousands of flows from ports of its choosing with a bare ACK each. The
// check is made once, when the stream opens: a wire connection opened later
// from the chosen port still shares its 5-tuple, which is why readers should
// key connections on the VLAN or the pcap interface too (docs/ids.md).

// plainTuple is a synthesized stream's 5-tuple, behind its endpoint.
type plainTuple struct {
	endpoint     uint64
	client, dest [16]byte
	cport, dport uint16
}

// plainPorts holds the 5-tuples of the synthesized streams open, with how
// many streams hold each (more than one only after a collision).
type plainPorts struct {
	mu sync.Mutex
	m  map[plainTuple]int
}

// plainPortTries is how many ports a stream's search tries: enough to step
// past an honest client's few flows from nearby ports, few enough that the
// flow table's lookups, made outside the lock, stay cheap when a hostile
// client holds them all.
const plainPortTries = 32

// reserve picks the client port of a stream from real, the client's real
// port, and holds its tuple until release; taken reports the flow table's
// flows (nil: none asked). It reports whether the stream collides with a
// flow or another stream: every port it tried was taken, and it took the
// flipped one.
func (p *plainPorts) reserve(t *plainTuple, v6 bool, real uint16, taken func(netstack.FlowKey) bool) (collided bool) {
	flipped := real ^ PlaintextPortFlip
	half := flipped & PlaintextPortFlip
	key := netstack.FlowKey{Endpoint: t.endpoint, Proto: 6, IPv6: v6, ClientAddr: t.client, ServerAddr: t.dest, ServerPort: t.dport}
	for i := range uint16(plainPortTries) {
		t.cport = half | (flipped+i)&^PlaintextPortFlip
		key.ClientPort = t.cport
		if taken != nil && taken(key) { // the flow table's lock, not ours
			continue
		}
		p.mu.Lock()
		if p.m[*t] == 0 {
			p.hold(t)
			p.mu.Unlock()
			return false
		}
		p.mu.Unlock()
	}
	t.cport = flipped
	p.mu.Lock()
	p.hold(t)
	p.mu.Unlock()
	return true
}

// hold counts one more stream on t's tuple. p.mu is held.
func (p *plainPorts) hold(t *plainTuple) {
	if p.m == nil {
		p.m = make(map[plainTuple]int)
	}
	p.m[*t]++
}

// release gives up one stream's hold on t's tuple.
func (p *plainPorts) release(t *plainTuple) {
	p.mu.Lock()
	if p.m[*t]--; p.m[*t] <= 0 {
		delete(p.m, *t)
	}
	p.mu.Unlock()
}
