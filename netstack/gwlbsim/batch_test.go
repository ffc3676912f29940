package gwlbsim

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// batchSink is a batch receiver that copies what it is given and records
// the headroom and capacity guarantees.
type batchSink struct {
	mu      sync.Mutex
	got     [][]byte
	flushes int
	badRoom int
	pending int
}

func (b *batchSink) reply(pkt []byte, off int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off < ReplyHeadroom || cap(pkt)-off < 65535 {
		b.badRoom++
	}
	b.got = append(b.got, append([]byte(nil), pkt[off:]...))
	b.pending++
}

func (b *batchSink) flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending > 0 {
		b.flushes++
	}
	b.pending = 0
}

func (b *batchSink) snapshot() (got [][]byte, flushes, badRoom, pending int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]byte(nil), b.got...), b.flushes, b.badRoom, b.pending
}

// TestSendBatchAndBatchReceiver: SendBatch carries packets of several
// flows (several source ports) in order, counts an unparsable one as
// failed without stopping the rest; the replies reach a batch receiver
// with the promised headroom and room to grow, each batch followed by a
// flush; a reply under a tampered header, or from another source port
// than its flow's, still never reaches it.
func TestSendBatchAndBatchReceiver(t *testing.T) {
	g := newGroup(t, 114, 1, func(c *Config, _ int) { c.Senders = 8 })
	ft := g.targets[0]
	ft.reply.Store(true)
	sink := &batchSink{}
	g.ep.SetBatchReceiver(sink.reply, sink.flush)

	var pkts, want [][]byte
	for i := range 40 {
		src := netip.AddrPortFrom(testClient, uint16(41000+i%5)) // five flows
		p := ipPacket(protoUDP, src, netip.AddrPortFrom(testDest, 53), []byte{byte(i)})
		pkts = append(pkts, p)
		want = append(want, reflectPacket(p))
	}
	pkts = append(pkts[:10:10], append([][]byte{{0x45, 0, 0}}, pkts[10:]...)...) // truncated IPv4
	failed, err := g.ep.SendBatch(pkts)
	if failed != 1 || err == nil {
		t.Fatalf("SendBatch: %d failed (%v), want the truncated packet alone", failed, err)
	}
	g.waitStats(t, "40 replies received", func(s Stats) bool { return s.Received == 40 })
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, flushes, badRoom, pending := sink.snapshot()
		if pending == 0 && len(got) == 40 {
			if badRoom != 0 || flushes == 0 {
				t.Fatalf("%d replies without the promised headroom or capacity, %d flushes", badRoom, flushes)
			}
			// Per flow, in the order sent.
			for flow := range 5 {
				var w, gg [][]byte
				for i := flow; i < 40; i += 5 {
					w = append(w, want[i])
				}
				for _, r := range got {
					if bytes.Equal(r[20:22], want[flow][20:22]) && bytes.Equal(r[22:24], want[flow][22:24]) {
						gg = append(gg, r)
					}
				}
				if len(gg) != len(w) {
					t.Fatalf("flow %d: %d replies, want %d", flow, len(gg), len(w))
				}
				for i := range w {
					if !bytes.Equal(gg[i], w[i]) {
						t.Fatalf("flow %d reply %d: %x, want %x", flow, i, gg[i], w[i])
					}
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d replies, %d pending a flush; want 40, none pending", len(got), pending)
		}
		time.Sleep(5 * time.Millisecond)
	}
	senders := map[uint16]bool{}
	for _, r := range ft.received() {
		senders[r.from.Port()] = true
	}
	if st := g.sim.Stats(); st.Sent != 40 || len(senders) < 2 {
		t.Errorf("sent %d from %d source ports: want 40, from several", st.Sent, len(senders))
	}

	// A tampered header is refused on the batch path as on the other.
	rs := ft.received()
	hdr := append([]byte(nil), rs[0].header...)
	hdr[len(hdr)-1] ^= 0xff
	ft.send(rs[0].from.Port(), hdr, reflectPacket(rs[0].inner))
	g.waitStats(t, "the tampered reply refused", func(s Stats) bool { return s.HeaderMismatch == 1 })
	// So is one from the target's address but another port than the
	// flow's: replies keep the outer ports.
	ft.send(0, rs[0].header, reflectPacket(rs[0].inner))
	g.waitStats(t, "the reply from another port refused", func(s Stats) bool { return s.WrongSourcePort == 1 })
	if got, _, _, _ := sink.snapshot(); len(got) != 40 {
		t.Errorf("%d replies delivered, want the 40 before the refused ones only", len(got))
	}
}

// TestSendBatchAllocations: once the flows exist, a batch allocates
// nothing.
func TestSendBatchAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count needs a quiet process")
	}
	// A target that never reads: a fake target's copies of what it gets
	// would count among the process's allocations.
	simAddr, tgt := testNet(115)
	sink, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tgt(0), 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sim, err := New(Config{Addr: simAddr, Appliance: sink.LocalAddr().(*net.UDPAddr).AddrPort(), Senders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	g := &group{sim: sim, ep: sim.Endpoint(testEndpoint, testAttachment)}
	var pkts [][]byte
	for i := range 16 {
		pkts = append(pkts, ipPacket(protoUDP, netip.AddrPortFrom(testClient, uint16(42000+i%2)), netip.AddrPortFrom(testDest, 9), make([]byte, 1000)))
	}
	if failed, err := g.ep.SendBatch(pkts); failed != 0 {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() { g.ep.SendBatch(pkts) })
	if allocs > 0.5 {
		t.Errorf("%.1f allocations per batch, want 0", allocs)
	}
}
