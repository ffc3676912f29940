package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// cidrListPolicy is an IP blocklist: one deny rule with n dest_cidrs and
// one allow rule with n client_cidrs, both mostly IPv4 /24s and /32s and
// some IPv6 /48s spread at random (not adjacent, so they do not merge into
// a few ranges), none of them holding the addresses BenchmarkDecideManyCIDRs
// decides on (in 203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32).
func cidrListPolicy(tb testing.TB, n int) *Policy {
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	list := func() string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteString(", ")
			}
			a := [4]byte{byte(1 + rng.IntN(190)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))}
			if a[0] == 10 || a[0] == 127 {
				a[0] = 11 // not the benchmark's client, nor loopback
			}
			switch {
			case i%8 == 7:
				fmt.Fprintf(&b, "\"2a%02x:%x:%x::/48\"", rng.IntN(256), rng.IntN(1<<16), rng.IntN(1<<16))
			case i%2 == 0:
				a[3] = 0
				fmt.Fprintf(&b, "%s/24", netip.AddrFrom4(a))
			default:
				b.WriteString(netip.AddrFrom4(a).String())
			}
		}
		return b.String()
	}
	cfg := fmt.Sprintf("policy:\n  default: allow\n  rules:\n"+
		"    - {name: ipblock, action: deny, dest_cidrs: [%s]}\n"+
		"    - {name: partners, action: deny, protocols: [udp], client_cidrs: [%s]}\n", list(), list())
	return mustParse(tb, cfg)
}

// BenchmarkDecideManyCIDRs is what one decision costs against rules of 1,
// 100 and 100,000 prefixes, for a destination in none of them: what every
// new flow pays with an IP blocklist. nat64local is an address in
// 64:ff9b:1::/48, which dest_cidrs also judge by the four IPv4 addresses it
// may carry; early is DecideEarly, which a TCP flow also runs at its SYN.
func BenchmarkDecideManyCIDRs(b *testing.B) {
	for _, n := range []int{1, 100, 100_000} {
		// Built within n's own run, so that -bench selecting one length
		// parses no other policy.
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			p := cidrListPolicy(b, n)
			for _, c := range []struct {
				name string
				subj Subject
			}{
				{"v4", Subject{Protocol: ProtoTCP, Dest: ap("203.0.113.9:443"), Client: ip("10.0.0.1")}},
				{"v6", Subject{Protocol: ProtoTCP, Dest: ap("[2001:db8::9]:443"), Client: ip("2001:db8:1::1")}},
				{"nat64local", Subject{Protocol: ProtoTCP, Dest: ap("[64:ff9b:1:cb00:cb:71::]:443"), Client: ip("10.0.0.1")}},
				{"udp-client", Subject{Protocol: ProtoUDP, Dest: ap("198.51.100.7:53"), Client: ip("10.0.0.1")}},
			} {
				if d := p.Decide(c.subj); d.Rule != DefaultRule {
					b.Fatalf("%d prefixes, %s: matched %q", n, c.name, d.Rule)
				}
				b.Run(c.name, func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						p.Decide(c.subj)
					}
				})
			}
			b.Run("early", func(b *testing.B) {
				subj := Subject{Dest: ap("203.0.113.9:443"), Client: ip("10.0.0.1")}
				for b.Loop() {
					p.DecideEarly(subj)
				}
			})
		})
	}
}

// BenchmarkPrefixSetSmall compares searching a prefixSet with scanning
// the list, as client_cidrs and dest_cidrs were matched before, for short
// lists, where a scan might have been the cheaper: lists of IPv4 and IPv6
// prefixes, asked about an IPv4 and an IPv6 address in none of them.
func BenchmarkPrefixSetSmall(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 4, 8, 16, 32} {
		list := make([]netip.Prefix, n)
		for i := range list {
			if i%2 == 0 {
				list[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(1 + rng.IntN(190)), byte(rng.IntN(256))}), 16)
			} else {
				list[i] = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x2a, byte(rng.IntN(256)), byte(rng.IntN(256))}), 24)
			}
		}
		s := newPrefixSet(list)
		for _, a := range []netip.Addr{ip("203.0.113.9"), ip("2001:db8::9")} {
			family := "v4"
			if a.Is6() {
				family = "v6"
			}
			b.Run(fmt.Sprintf("%d/scan/%s", n, family), func(b *testing.B) {
				for b.Loop() {
					refContains(list, a)
				}
			})
			b.Run(fmt.Sprintf("%d/search/%s", n, family), func(b *testing.B) {
				for b.Loop() {
					s.contains(a)
				}
			})
		}
	}
}

// BenchmarkPrefixSetBuild is what indexing a rule's 100,000 prefixes costs
// when its policy is parsed (indexAddrs).
func BenchmarkPrefixSetBuild(b *testing.B) {
	p := cidrListPolicy(b, 100_000)
	list := p.rules[0].dests.prefixes
	b.ReportAllocs()
	for b.Loop() {
		newPrefixSet(list)
	}
}
