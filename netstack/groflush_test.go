package netstack

import (
	"bytes"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestCoalescerFlushEmptiesGRO: IPv4 segments of several flows that fall
// in one of gVisor's GRO buckets all reach their stack at the batch's
// flush, and none is left for the next batch, which may be another GWLB
// endpoint's stack. gVisor's GRO.Flush let out one packet per bucket, and
// a segment of stack A's flow went to stack B with B's batch, against
// design.md's "overlapping client CIDRs behind two endpoints never meet"
// (review r3s28 F1).
func TestCoalescerFlushEmptiesGRO(t *testing.T) {
	mk := func() (*endpointStack, *checkedRecorder) {
		rec := &checkedRecorder{}
		var d stack.NetworkDispatcher = rec
		st := &endpointStack{link: &link{}}
		st.link.dispatcher.Store(&d)
		return st, rec
	}
	srcPorts := func(r *checkedRecorder) map[uint16]int {
		ps := map[uint16]int{}
		for _, p := range r.pkts {
			ps[header.TCP(p[header.IPv4MinimumSize:]).SourcePort()]++
		}
		return ps
	}
	stA, recA := mk()
	stB, recB := mk()
	c := newCoalescer()
	server := netip.MustParseAddrPort("198.18.9.9:443")
	client := netip.MustParseAddr("198.18.0.5")
	payload := bytes.Repeat([]byte{'x'}, 1000)
	send := func(st *endpointStack, port uint16, seq uint32) {
		t.Helper()
		pkt := clientSegment(netip.AddrPortFrom(client, port), server, seq, 1, header.TCPFlagAck, payload)
		p, reason := ParsePacket(pkt, EtherTypeIPv4)
		if reason != DropNone || !coalescable(&p, pkt) {
			t.Fatal(reason)
		}
		c.hold(st, pkt, &p)
	}
	// Ports 8 apart fall in one bucket (gVisor sums addresses and ports,
	// mod 8): eight flows fill it.
	const flows = 8
	for i := range flows {
		send(stA, 30000+8*uint16(i), 1000)
	}
	c.flush()
	if got := srcPorts(recA); len(got) != flows || len(recA.pkts) != flows {
		t.Errorf("stack A's batch flushed: it got %d packets of %d flows (%v), want one of each of %d", len(recA.pkts), len(got), got, flows)
	}
	send(stB, 40000, 9000)
	c.flush()
	if got := srcPorts(recB); len(recB.pkts) != 1 || got[40000] != 1 {
		t.Errorf("stack B's batch: it got %v, want its own segment alone (source port 40000)", got)
	}
}
