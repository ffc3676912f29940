package netstack

// Cases a mutation review found no test held: each fails with its check
// broken (a stack drop shown to the tap, a parse check, a forbidden spelling).

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// a TCP segment shorter than the 20-byte fixed
// header, but long enough for its flags (14 bytes), is malformed: read as
// a SYN it would make a flow and reach the tap, and gVisor drops it.
func TestShortTCPHeaderIsMalformed(t *testing.T) {
	for _, tl := range []int{8, 14, 19} {
		pkt := append([]byte{}, innerV4[:20+tl]...)
		pkt[3] = byte(20 + tl)
		if p, r := ParsePacket(pkt, EtherTypeIPv4); r != DropInnerMalformed {
			t.Errorf("TCP header of %d bytes: %s (flags %#x), want %s", tl, r, p.TCPFlags, DropInnerMalformed)
		}
	}
}

// a flow marked reset by an out-of-window RST
// that has then been idle past the established timeout goes at the next
// Expire, although the stack still holds the connection: the held check
// only spares it the transitory timeout.
func TestHeldResetFlowStillIdlesOut(t *testing.T) {
	fam := groFamilies[0]
	r := newGRORig(t, fam.client, fam.server)
	k := (&Packet{Proto: protoTCP, IPv6: fam.client.Addr().Is6(), Src: fam.client.Addr().As16(), Dst: fam.server.Addr().As16(), SrcPort: fam.client.Port(), DstPort: fam.server.Port()}).Key(7)
	r.batch(clientSegment(fam.client, fam.server, r.seq+0x40000000, 0, header.TCPFlagRst, nil))
	r.noReply(t, 200*time.Millisecond)
	if !r.s.holdsTCP(&k) {
		t.Fatal("the stack took the out-of-window RST")
	}
	later := monoclock.Now() + int64(r.s.flows.tcpIdle+time.Second)
	if n := r.s.flows.Expire(later); n != 1 || r.s.flows.Lookup(&k) != nil {
		t.Fatalf("a reset-marked flow idle past the established timeout: %d expired, want 1", n)
	}
}
