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
// tried in turn, wrapping around within it, and the first free one is used.
// The check is made once, when the stream opens: a wire connection opened
// later from the chosen port still shares its 5-tuple, which is why readers
// should key connections on the VLAN or the pcap interface too (docs/ids.md).

// plainTuple is a synthesized stream's 5-tuple, behind its endpoint.
type plainTuple struct {
	endpoint     uint64
	client, dest [16]byte
	cport, dport uint16
}

// plainPorts holds the 5-tuples of the synthesized streams open.
type plainPorts struct {
	mu sync.Mutex
	m  map[plainTuple]struct{}
}

// plainPortSpan is how many ports a stream's search may try: the whole
// half of the port space its flipped port is in.
const plainPortSpan = PlaintextPortFlip

// reserve picks the client port of a stream from real, the client's real
// port, and holds its tuple until release; taken reports the flow table's
// flows (nil: none asked). It returns false when every port of the half is
// taken, which needs some 32,768 flows of one client to one destination.
func (p *plainPorts) reserve(t *plainTuple, v6 bool, real uint16, taken func(netstack.FlowKey) bool) bool {
	flipped := real ^ PlaintextPortFlip
	half := flipped & PlaintextPortFlip
	key := netstack.FlowKey{Endpoint: t.endpoint, Proto: 6, IPv6: v6, ClientAddr: t.client, ServerAddr: t.dest, ServerPort: t.dport}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range uint16(plainPortSpan) {
		t.cport = half | (flipped+i)&^PlaintextPortFlip
		if _, open := p.m[*t]; open {
			continue
		}
		key.ClientPort = t.cport
		if taken != nil && taken(key) {
			continue
		}
		if p.m == nil {
			p.m = make(map[plainTuple]struct{})
		}
		p.m[*t] = struct{}{}
		return true
	}
	return false
}

// release lets another stream have t's tuple.
func (p *plainPorts) release(t *plainTuple) {
	p.mu.Lock()
	delete(p.m, *t)
	p.mu.Unlock()
}
