package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// udpDatagram builds an IP packet carrying a UDP datagram of size payload
// bytes from src:sport to dst:dport (no checksums: nothing here checks them).
func udpDatagram(src, dst netip.AddrPort, payload int) []byte {
	udp := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	for i := range payload {
		udp[8+i] = byte(i * 7)
	}
	if src.Addr().Is4() {
		ip := make([]byte, 20, 20+len(udp))
		ip[0], ip[8], ip[9] = 0x45, 64, protoUDP
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		return append(ip, udp...)
	}
	ip := make([]byte, 40, 40+len(udp))
	ip[0], ip[6], ip[7] = 0x60, protoUDP, 64
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(ip, udp...)
}

// fragment splits the IP packet pkt (without extension headers) into
// fragments of at most mtu bytes with identification id, as a stack would.
func fragment(pkt []byte, id uint32, mtu int) [][]byte {
	v6 := pkt[0]>>4 == 6
	hl := 20
	if v6 {
		hl = 40
	}
	hdr, payload := pkt[:hl], pkt[hl:]
	fhl := hl
	if v6 {
		fhl += 8 // the fragment header
	}
	chunk := (mtu - fhl) &^ 7
	var frags [][]byte
	for off := 0; off < len(payload); off += chunk {
		end := min(off+chunk, len(payload))
		more := end < len(payload)
		f := append([]byte(nil), hdr...)
		if v6 {
			f[6] = ipv6Fragment
			binary.BigEndian.PutUint16(f[4:], uint16(8+end-off))
			fh := make([]byte, 8)
			fh[0] = pkt[6]
			fo := uint16(off)
			if more {
				fo |= 1
			}
			binary.BigEndian.PutUint16(fh[2:], fo)
			binary.BigEndian.PutUint32(fh[4:], id)
			f = append(f, fh...)
		} else {
			binary.BigEndian.PutUint16(f[2:], uint16(hl+end-off))
			binary.BigEndian.PutUint16(f[4:], uint16(id))
			fo := uint16(off / 8)
			if more {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(f[6:], fo)
		}
		frags = append(frags, append(f, payload[off:end]...))
	}
	return frags
}

func parseFrags(t testing.TB, frags [][]byte) []Packet {
	t.Helper()
	ps := make([]Packet, len(frags))
	for i, f := range frags {
		ether := uint16(EtherTypeIPv4)
		if f[0]>>4 == 6 {
			ether = EtherTypeIPv6
		}
		p, r := ParsePacket(f, ether)
		if r != DropNone {
			t.Fatalf("fragment %d: %s", i, r)
		}
		if (i > 0) != p.Fragment || (i < len(frags)-1) != p.MoreFragments {
			t.Fatalf("fragment %d of %d: Fragment=%v MoreFragments=%v", i, len(frags), p.Fragment, p.MoreFragments)
		}
		ps[i] = p
	}
	return ps
}

var fragFamilies = []struct {
	name     string
	src, dst netip.AddrPort
}{
	{"IPv4", netip.MustParseAddrPort("127.0.0.1:53"), netip.MustParseAddrPort("198.18.0.5:40000")},
	{"IPv6", netip.MustParseAddrPort("[::1]:53"), netip.MustParseAddrPort("[2001:db8::5]:40000")},
}

func TestFragTable(t *testing.T) {
	for _, fam := range fragFamilies {
		t.Run(fam.name, func(t *testing.T) {
			var ft fragTable
			flow, other := &Flow{}, &Flow{}
			frags := parseFrags(t, fragment(udpDatagram(fam.src, fam.dst, 20000), 0x1234, DefaultMTU))
			if len(frags) != 3 {
				t.Fatalf("%d fragments, want 3", len(frags))
			}
			const now = int64(1e18)
			ft.remember(&frags[0], flow, now)
			// Another datagram between the same hosts, with another ID.
			others := parseFrags(t, fragment(udpDatagram(fam.src, fam.dst, 20000), 0x1235, DefaultMTU))
			ft.remember(&others[0], other, now)
			if f := ft.follow(&frags[1], now+1); f != flow {
				t.Fatalf("middle fragment: flow %p, want %p", f, flow)
			}
			if f := ft.follow(&others[1], now+1); f != other {
				t.Fatalf("the other datagram's middle fragment: flow %p, want %p", f, other)
			}
			if f := ft.follow(&frags[2], now+2); f != flow {
				t.Fatalf("last fragment: flow %p, want %p", f, flow)
			}
			if f := ft.follow(&frags[2], now+3); f != nil {
				t.Fatal("the last fragment did not free the entry")
			}
			if f := ft.follow(&others[2], now+3); f != other {
				t.Fatalf("the other datagram's last fragment: flow %p, want %p", f, other)
			}

			// A fragment whose first was never seen has no flow.
			unseen := parseFrags(t, fragment(udpDatagram(fam.src, fam.dst, 20000), 0x9999, DefaultMTU))
			if f := ft.follow(&unseen[1], now); f != nil {
				t.Fatal("a fragment of an unseen datagram found a flow")
			}

			// Expiry.
			ft.remember(&frags[0], flow, now)
			if f := ft.follow(&frags[1], now+fragTTL); f != flow {
				t.Fatal("an entry expired before its time")
			}
			if f := ft.follow(&frags[1], now+fragTTL+1); f != nil {
				t.Fatal("an expired entry still gives its flow")
			}
			ft.remember(&frags[0], flow, now+2*fragTTL)
			if f := ft.follow(&frags[1], now+2*fragTTL+1); f != flow {
				t.Fatal("an ID seen again after expiry has no flow")
			}

			// The same ID from another address is another datagram.
			swapped := frags[1]
			swapped.Src, swapped.Dst = swapped.Dst, swapped.Src
			if f := ft.follow(&swapped, now); f != nil {
				t.Fatal("a fragment with swapped addresses found a flow")
			}
		})
	}
}

// TestFragTableProtocol: IPv4 datagrams are told apart by protocol as well;
// an IPv6 fragment's next header may differ from its first fragment's.
func TestFragTableProtocol(t *testing.T) {
	var ft fragTable
	flow := &Flow{}
	for _, fam := range fragFamilies {
		frags := parseFrags(t, fragment(udpDatagram(fam.src, fam.dst, 20000), 7, DefaultMTU))
		ft.remember(&frags[0], flow, 0)
		later := frags[1]
		later.Proto = protoTCP
		if f := ft.follow(&later, 1); (f != nil) != later.IPv6 {
			t.Errorf("%s: a later fragment with another protocol found flow %p", fam.name, f)
		}
	}
}

// TestFragTableBound: the table never holds more than its fixed number of
// entries, and the datagrams remembered last are always found.
func TestFragTableBound(t *testing.T) {
	var ft fragTable
	const capacity = fragBuckets * fragWays
	const n = 20 * capacity
	src, dst := fragFamilies[1].src.Addr().As16(), fragFamilies[1].dst.Addr().As16()
	pkt := func(id int, more bool) *Packet {
		return &Packet{IPv6: true, Proto: protoUDP, Src: src, Dst: dst, FragmentID: uint32(id), MoreFragments: more}
	}
	flows := make([]Flow, n)
	for i := range n {
		ft.remember(pkt(i, true), &flows[i], int64(i))
	}
	held := 0
	for i := range ft.buckets {
		for _, e := range ft.buckets[i].ways {
			if e.flow != nil {
				held++
			}
		}
	}
	if held != capacity {
		t.Errorf("%d entries held after %d datagrams, want %d", held, n, capacity)
	}
	found := 0
	for i := range n {
		if f := ft.follow(pkt(i, true), int64(n)); f != nil {
			if f != &flows[i] {
				t.Fatalf("datagram %d found the flow of another", i)
			}
			found++
		}
	}
	if found != capacity {
		t.Errorf("%d datagrams found, want %d", found, capacity)
	}
	// Eviction is oldest first within a bucket: the last few remembered,
	// fewer than a bucket holds, are all there.
	for i := n - fragWays; i < n; i++ {
		if ft.follow(pkt(i, true), int64(n)) != &flows[i] {
			t.Errorf("datagram %d, among the last remembered, was evicted", i)
		}
	}
	first, last := *pkt(1, true), *pkt(1, false)
	last.Fragment = true
	if a := testing.AllocsPerRun(100, func() {
		ft.remember(&first, &flows[1], 0)
		ft.follow(&last, 0)
	}); a != 0 {
		t.Errorf("remember and follow allocate %v times", a)
	}
}

// TestFragTableConcurrent: writers fragmenting at once each find their own
// flows (run with -race). Each writer holds one entry at a time, so four
// writers never evict each other, wherever their datagrams hash.
func TestFragTableConcurrent(t *testing.T) {
	var ft fragTable
	src, dst := fragFamilies[0].src.Addr().As16(), fragFamilies[0].dst.Addr().As16()
	var wg sync.WaitGroup
	errs := make(chan error, fragWays)
	for g := range fragWays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			flow := &Flow{}
			for i := range 2000 {
				id := uint32(g<<12 | i&0xfff)
				p := Packet{Proto: protoUDP, Src: src, Dst: dst, FragmentID: id, MoreFragments: true}
				now := time.Now().UnixNano()
				ft.remember(&p, flow, now)
				p.Fragment = true
				if ft.follow(&p, now) != flow {
					errs <- fmt.Errorf("writer %d: middle fragment of datagram %d lost its flow", g, i)
					return
				}
				p.MoreFragments = false
				if ft.follow(&p, now) != flow {
					errs <- fmt.Errorf("writer %d: last fragment of datagram %d lost its flow", g, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

type capturePath struct {
	mu    sync.Mutex
	sent  [][]byte
	gwlbs []netip.AddrPort
}

func (c *capturePath) send(pkt []byte, gwlb netip.AddrPort) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent = append(c.sent, bytes.Clone(pkt[outerHeadroom:]))
	c.gwlbs = append(c.gwlbs, gwlb)
	return nil
}
func (c *capturePath) sendBatch(b *replyBatch) (int, error) {
	for i := range b.n {
		c.send(b.pkts[i], b.dsts[i])
	}
	return 0, nil
}
func (*capturePath) close() error { return nil }
func (*capturePath) name() string { return "capture" }

// TestReplyFragmentsOneCallEach: every fragment of a reply, each sent on its
// own as gVisor writes them, goes out under the flow's GENEVE header.
func TestReplyFragmentsOneCallEach(t *testing.T) {
	for _, fam := range fragFamilies {
		t.Run(fam.name, func(t *testing.T) {
			cp := &capturePath{}
			s := &Server{flows: newFlowTable(16, time.Hour, time.Hour), ret: cp}
			s.cfg.MTU = DefaultMTU
			gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
			ether := uint16(EtherTypeIPv4)
			if fam.src.Addr().Is6() {
				ether = EtherTypeIPv6
			}
			hdr := AppendHeader(nil, ether, 0, 7, 8, 9, nil)
			h, _ := ParseHeader(append(bytes.Clone(hdr), 0x45))
			// The client's packet: from dst to src of the reply.
			p := Packet{IPv6: fam.src.Addr().Is6(), Proto: protoUDP, Src: fam.dst.Addr().As16(), Dst: fam.src.Addr().As16(),
				SrcPort: fam.dst.Port(), DstPort: fam.src.Port()}
			k := p.Key(7)
			s.flows.Touch(&k, hdr, h, gwlb, 0)

			var ft fragTable
			frags := fragment(udpDatagram(fam.src, fam.dst, 20000), 42, DefaultMTU)
			stray := fragment(udpDatagram(fam.src, fam.dst, 20000), 43, DefaultMTU)[1]
			const innerOff = outerHeadroom + MaxGeneveHeader
			buf := make([]byte, maxDatagram)
			send := func(f []byte) {
				copy(buf[innerOff:], f)
				s.sendInner(7, buf, innerOff, len(f), time.Now().UnixNano(), &ft)
			}
			for _, f := range frags {
				send(f)
			}
			send(stray)
			if len(cp.sent) != len(frags) {
				t.Fatalf("%d of %d fragments sent; drops %v", len(cp.sent), len(frags), s.Stats().Drops)
			}
			for i, d := range cp.sent {
				if !bytes.Equal(d, append(bytes.Clone(hdr), frags[i]...)) || cp.gwlbs[i] != gwlb {
					t.Errorf("fragment %d went to %s under another header or with other bytes", i, cp.gwlbs[i])
				}
			}
			if n := s.stats.drops[DropNoFlow].Load(); n != 1 {
				t.Errorf("%d fragments dropped without a flow, want 1 (the stray)", n)
			}
		})
	}
}

// TestFragTableFair: a client sending first fragments under ever new IDs
// evicts its own entries, not another client's. Before, a new datagram
// took the oldest entry of its bucket, whoever's: after 1,024 first
// fragments of one client, the other's later fragment found no flow
// (fragment_without_flow), and neither did any other client's. So too
// with fewer addresses than a bucket has entries, or addresses of one /80.
func TestFragTableFair(t *testing.T) {
	dst := netip.MustParseAddr("198.18.9.9").As16()
	victimAddr := netip.MustParseAddr("::ffff:198.18.0.5").As16()
	v6dst := netip.MustParseAddr("2001:db8::9").As16()
	v6victim := netip.MustParseAddr("2001:db8:0:1::5").As16()
	first := func(src, dst [16]byte, id int) *Packet {
		v6 := !netip.AddrFrom16(src).Is4In6()
		return &Packet{IPv6: v6, Proto: protoUDP, Src: src, Dst: dst, FragmentID: uint32(id), MoreFragments: true}
	}
	later := func(src, dst [16]byte, id int) *Packet {
		p := first(src, dst, id)
		p.Fragment = true
		return p
	}
	cases := []struct {
		name     string
		src, dst [16]byte
		// attacker returns the source of the attacker's i-th datagram.
		attacker func(i int) [16]byte
	}{
		{"one address", victimAddr, dst, func(int) [16]byte {
			return netip.MustParseAddr("::ffff:198.18.0.66").As16()
		}},
		{"three addresses", victimAddr, dst, func(i int) [16]byte {
			return netip.AddrFrom4([4]byte{198, 18, 0, byte(66 + i%3)}).As16()
		}},
		{"addresses of one /80", v6victim, v6dst, func(i int) [16]byte {
			a := netip.MustParseAddr("2001:db8:0:2::").As16()
			a[14], a[15] = byte(i>>8), byte(i)
			return a
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var ft fragTable
			const now = int64(1e18)
			victim := &Flow{key: FlowKey{ClientAddr: c.src}}
			ft.remember(first(c.src, c.dst, 0x4242), victim, now)
			attackers := make([]Flow, 1024)
			for i := range attackers {
				src := c.attacker(i)
				attackers[i].key.ClientAddr = src
				ft.remember(first(src, c.dst, i), &attackers[i], now+int64(i))
			}
			if f := ft.followIn(later(c.src, c.dst, 0x4242), now+2000); f != victim {
				t.Fatalf("the victim's later fragment after 1,024 of the attacker's first fragments: flow %p, want %p", f, victim)
			}
			// The attacker's own latest are there, as before.
			for i := len(attackers) - fragWays; i < len(attackers); i++ {
				if f := ft.followIn(later(c.attacker(i), c.dst, i), now+2000); f != &attackers[i] {
					t.Errorf("the attacker's datagram %d, among its last, was evicted", i)
				}
			}
		})
	}

}

// TestFragTableVictim: which entry of a full bucket a new datagram takes.
func TestFragTableVictim(t *testing.T) {
	const now = int64(1e18)
	ms := int64(time.Millisecond)
	owner := func(b byte) [16]byte { return netip.AddrFrom4([4]byte{198, 18, 0, b}).As16() }
	newcomer := owner(99)
	type way struct {
		owner byte
		age   int64 // since remembered
	}
	cases := []struct {
		name string
		ways [fragWays]way
		want int
	}{
		{"its own client's, young as it is", [fragWays]way{{1, 900 * ms}, {2, 800 * ms}, {3, 700 * ms}, {99, 1 * ms}}, 3},
		{"another's remembered over fragGrace ago", [fragWays]way{{2, 100 * ms}, {1, 2000 * ms}, {2, 50 * ms}, {3, 10 * ms}}, 1},
		{"a client's holding two", [fragWays]way{{1, 500 * ms}, {2, 400 * ms}, {2, 300 * ms}, {3, 10 * ms}}, 1},
		{"the oldest, when each is another's only", [fragWays]way{{1, 400 * ms}, {2, 500 * ms}, {3, 300 * ms}, {4, 10 * ms}}, 1},
		{"a free one first", [fragWays]way{{1, 400 * ms}, {0, 0}, {99, 300 * ms}, {4, 10 * ms}}, 1},
		{"an expired one first", [fragWays]way{{1, 400 * ms}, {2, fragTTL + 1}, {99, 300 * ms}, {4, 10 * ms}}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b fragBucket
			for i, w := range c.ways {
				if w.owner == 0 {
					continue
				}
				b.ways[i] = fragEntry{key: fragKey{id: uint32(i)}, flow: &Flow{}, owner: owner(w.owner), expires: now - w.age + fragTTL}
			}
			k := fragKey{id: 1000}
			if got := b.victim(&k, newcomer, now); got != c.want {
				t.Errorf("took way %d, want %d", got, c.want)
			}
		})
	}
}
