package policy

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// refContains is how client_cidrs matched before prefixSet: a scan of the
// list. prefixSet must answer as it does for every list and address.
func refContains(list []netip.Prefix, a netip.Addr) bool {
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// refDestContains is how dest_cidrs matched before destSet: the scan, for
// the destination and for each IPv4 address it carries.
func refDestContains(list []netip.Prefix, deny bool, a netip.Addr) bool {
	if refContains(list, a) {
		return true
	}
	v4s, n := EmbeddedIPv4(a)
	for _, v4 := range v4s[:n] {
		if refContains(list, v4) == deny {
			return deny
		}
	}
	return n > 0 && !deny
}

// prefixGen draws prefixes and addresses near one another and near the
// edges of the address spaces, so that lists overlap, nest and touch, and
// addresses fall on, inside and just outside their ranges.
type prefixGen struct{ rng *rand.Rand }

var (
	v4Bases = []netip.Addr{ip("0.0.0.0"), ip("255.255.255.255"), ip("10.0.0.0"), ip("192.0.2.0"), ip("198.51.100.255"), ip("127.0.0.1")}
	v6Bases = []netip.Addr{ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), ip("64:ff9b::"), ip("64:ff9b:1::"),
		ip("2002::"), ip("::ffff:0:0"), ip("::ffff:0.0.0.0"), ip("2001:db8::"), ip("0:0:0:0:ffff:ffff:ffff:ffff"), ip("fe80::")}
)

// addr is an address near a base: a base with random low bits, one of
// its neighbours, or anything.
func (g prefixGen) addr(v6 bool) netip.Addr {
	bases, bits := v4Bases, 32
	if v6 {
		bases, bits = v6Bases, 128
	}
	b := bases[g.rng.IntN(len(bases))].As16()
	if !v6 {
		b = netip.AddrFrom4(bases[g.rng.IntN(len(bases))].As4()).As16()
	}
	switch g.rng.IntN(4) {
	case 0: // the base itself
	case 1: // anything
		for i := 16 - bits/8; i < 16; i++ {
			b[i] = byte(g.rng.Uint32())
		}
	default: // random low bits
		for i := 16 - g.rng.IntN(bits/8+1); i < 16; i++ {
			b[i] = byte(g.rng.Uint32())
		}
	}
	a := netip.AddrFrom16(b)
	if !v6 {
		a = a.Unmap()
	}
	return a
}

// bits is a prefix length for an address of n bits, often an edge one.
func (g prefixGen) bits(n int) int {
	switch g.rng.IntN(4) {
	case 0:
		return []int{0, 1, n - 1, n, n / 2, 24, 16, 8}[g.rng.IntN(8)]
	default:
		return g.rng.IntN(n + 1)
	}
}

func (g prefixGen) prefix() netip.Prefix {
	switch g.rng.IntN(10) {
	case 0, 1, 2, 3:
		return netip.PrefixFrom(g.addr(false), g.bits(32)).Masked()
	case 4:
		// A mapped prefix as written, and as the parser reads it: IPv4
		// when /96 or longer.
		v4 := g.addr(false).As4()
		p := netip.PrefixFrom(netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: v4[0], 13: v4[1], 14: v4[2], 15: v4[3]}), 80+g.rng.IntN(49)).Masked()
		if g.rng.IntN(2) == 0 {
			if q, _, ok := parseCIDR(p.String()); ok {
				return q
			}
		}
		return p
	case 5:
		if g.rng.IntN(20) == 0 {
			return netip.Prefix{} // holds nothing; the parser makes none
		}
		fallthrough
	default:
		return netip.PrefixFrom(g.addr(true), g.bits(128)).Masked()
	}
}

// list draws n prefixes, some of them the sibling of another (the other
// half of the prefix one bit shorter: adjacent), its parent or a child.
func (g prefixGen) list(n int) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	for len(out) < n {
		if len(out) == 0 || g.rng.IntN(3) != 0 {
			out = append(out, g.prefix())
			continue
		}
		p := out[g.rng.IntN(len(out))]
		if !p.IsValid() {
			continue
		}
		switch bits := p.Bits(); g.rng.IntN(3) {
		case 0:
			if bits > 0 {
				b := p.Addr().As16()
				i := bits - 1 + 128 - p.Addr().BitLen()
				b[i/8] ^= 0x80 >> (i % 8)
				a := netip.AddrFrom16(b)
				if p.Addr().Is4() {
					a = a.Unmap()
				}
				out = append(out, netip.PrefixFrom(a, bits))
			}
		case 1:
			if bits > 0 {
				out = append(out, netip.PrefixFrom(p.Addr(), bits-1).Masked())
			}
		default:
			if bits < p.Addr().BitLen() {
				out = append(out, netip.PrefixFrom(p.Addr(), bits+1))
			}
		}
	}
	return out
}

// probes are the addresses to ask about a list: the edges of each of its
// prefixes and their neighbours, random ones, each of those IPv4-mapped,
// NAT64 and 6to4 forms of IPv4 ones, a zone, and the invalid address.
func (g prefixGen) probes(list []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, p := range list {
		if !p.IsValid() {
			continue
		}
		r := prefixRange(p)
		for _, k := range []u128{r.first, r.last} {
			for _, a := range []netip.Addr{keyAddr(k, p.Addr().Is4()), keyAddr(k, p.Addr().Is4()).Prev(), keyAddr(k, p.Addr().Is4()).Next()} {
				if a.IsValid() {
					out = append(out, a)
				}
			}
		}
	}
	for range 20 {
		out = append(out, g.addr(g.rng.IntN(2) == 0))
	}
	for _, a := range out {
		if !a.Is4() {
			continue
		}
		b := a.As4()
		out = append(out,
			netip.AddrFrom16(a.As16()), // mapped
			netip.AddrFrom16([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 12: b[0], 13: b[1], 14: b[2], 15: b[3]}),
			netip.AddrFrom16([16]byte{0: 0x20, 1: 0x02, 2: b[0], 3: b[1], 4: b[2], 5: b[3], 15: 1}),
			// 64:ff9b:1::/48 with the address in the /48 and /64 layouts
			netip.AddrFrom16([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 5: 1, 6: b[0], 7: b[1], 9: b[2], 10: b[3]}),
			netip.AddrFrom16([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 5: 1, 9: b[0], 10: b[1], 11: b[2], 12: b[3]}),
		)
	}
	return append(out, ip("fe80::1%eth0"), ip("::ffff:10.0.0.1%x"), netip.Addr{})
}

func keyAddr(k u128, is4 bool) netip.Addr {
	if is4 {
		return netip.AddrFrom4([4]byte{byte(k.lo >> 24), byte(k.lo >> 16), byte(k.lo >> 8), byte(k.lo)})
	}
	var b [16]byte
	for i := range 8 {
		b[i], b[8+i] = byte(k.hi>>(56-8*i)), byte(k.lo>>(56-8*i))
	}
	return netip.AddrFrom16(b)
}

// checkPrefixSet compares the set built from list with the scan it
// replaced, on every probe.
func checkPrefixSet(t *testing.T, g prefixGen, list []netip.Prefix) {
	t.Helper()
	s := newPrefixSet(list)
	for _, a := range g.probes(list) {
		if got, want := s.contains(a), refContains(list, a); got != want {
			t.Fatalf("set of %v: contains(%v) = %v, the scan says %v (ranges v4 %v v6 %v)", list, a, got, want, s.v4, s.v6)
		}
		for _, deny := range []bool{false, true} {
			d := &destSet{set: s, deny: deny}
			if got, want := d.contains(a), refDestContains(list, deny, a); got != want {
				t.Fatalf("dest set (deny %v) of %v: contains(%v) = %v, the scan says %v", deny, list, a, got, want)
			}
		}
	}
}

// TestPrefixSetMatchesScan holds prefixSet and destSet to the linear scans
// they replaced, over random lists that overlap, nest and touch, with /0,
// full-length and mapped prefixes, asked about the edges of each prefix
// and the IPv4 addresses NAT64 and 6to4 addresses carry.
func TestPrefixSetMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 1))
	g := prefixGen{rng}
	for i := range 3000 {
		n := rng.IntN(12)
		if i%50 == 0 {
			n = 200 + rng.IntN(200)
		}
		checkPrefixSet(t, g, g.list(n))
	}
}

// TestPrefixSetEdges holds the lists whose ranges end at an edge of the
// address space, where computing the next address wraps.
func TestPrefixSetEdges(t *testing.T) {
	pp := netip.MustParsePrefix
	g := prefixGen{rand.New(rand.NewPCG(17, 2))}
	for _, list := range [][]netip.Prefix{
		{pp("0.0.0.0/0"), pp("10.0.0.0/8"), pp("::/0"), pp("2001:db8::/32"), pp("1.2.3.4/32")},
		{pp("255.255.255.255/32"), pp("255.255.255.254/32"), pp("0.0.0.0/32"), pp("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), pp("::/128")},
		{pp("128.0.0.0/1"), pp("0.0.0.0/1"), pp("8000::/1"), pp("::/1"), pp("::ffff:0:0/96")},
		{pp("0:0:0:0:ffff:ffff:ffff:ffff/128"), pp("0:0:0:1::/128"), pp("10.0.0.0/9"), pp("10.128.0.0/9"), pp("10.0.0.0/32")},
	} {
		checkPrefixSet(t, g, list)
	}
	// Adjacent and overlapping prefixes merge into one range.
	s := newPrefixSet([]netip.Prefix{pp("10.0.0.0/9"), pp("10.128.0.0/9"), pp("11.0.0.0/8"), pp("10.1.0.0/16"),
		pp("::/1"), pp("8000::/1")})
	if len(s.v4) != 1 || len(s.v6) != 1 {
		t.Errorf("ranges v4 %v, v6 %v: want one of each", s.v4, s.v6)
	}
}

// FuzzPrefixSet is TestPrefixSetMatchesScan with lists drawn from the
// fuzzer's seeds.
func FuzzPrefixSet(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint8(8))
	f.Add(uint64(3), uint64(4), uint8(64))
	f.Fuzz(func(t *testing.T, s1, s2 uint64, n uint8) {
		g := prefixGen{rand.New(rand.NewPCG(s1, s2))}
		checkPrefixSet(t, g, g.list(int(n)))
	})
}

// TestDecideManyCIDRs decides against long prefix lists through Parse: the
// rules' order and conditions around the prefixes are kept.
func TestDecideManyCIDRs(t *testing.T) {
	p := cidrListPolicy(t, 1000)
	deny := p.rules[0].dests.prefixes
	in := deny[len(deny)/2]
	for _, c := range []struct {
		subj Subject
		rule string
	}{
		{Subject{Protocol: ProtoTCP, Dest: netip.AddrPortFrom(in.Addr(), 443), Client: ip("10.0.0.1")}, "ipblock"},
		{Subject{Protocol: ProtoTCP, Dest: ap("203.0.113.9:443"), Client: ip("10.0.0.1")}, DefaultRule},
		{Subject{Protocol: ProtoUDP, Dest: ap("203.0.113.9:53"), Client: p.rules[1].clients[500].Addr()}, "partners"},
		{Subject{Protocol: ProtoTCP, Dest: ap("203.0.113.9:53"), Client: p.rules[1].clients[500].Addr()}, DefaultRule},
	} {
		if d := p.Decide(c.subj); d.Rule != c.rule {
			t.Errorf("Decide(%v -> %v, %s) = rule %q, want %q", c.subj.Client, c.subj.Dest, c.subj.Protocol, d.Rule, c.rule)
		}
	}
	if d, ok := p.DecideEarly(Subject{Dest: netip.AddrPortFrom(in.Addr(), 443), Client: ip("10.0.0.1")}); !ok || d.Rule != "ipblock" {
		t.Errorf("DecideEarly to %v = %v, %v: want ipblock", in, d, ok)
	}
}

// TestLoadIndexesPrefixes checks that a policy file's prefixes are indexed
// when it is parsed, before it is put in force, not by the first flow.
func TestLoadIndexesPrefixes(t *testing.T) {
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte("policy:\n  default: allow\n  rules:\n    - {name: r, dest_cidrs: [10.0.0.0/8], client_cidrs: [192.0.2.0/24], action: deny}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, _, _, err := Check(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.addrs) != 1 || p.addrs[0].dests == nil || p.addrs[0].clients == nil {
		t.Errorf("after loading, the index is %+v", p.addrs)
	}
}
