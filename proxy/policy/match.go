package policy

// How a rule's conditions match a subject: domains, ports, endpoints,
// address prefixes.

import (
	"net/netip"
	"strings"
)

// normalizeDomain appends d to dst in lower case without one trailing dot.
// It reports false for a d with a byte no host name has (letters, digits,
// '-', '_', '.'), unless d is an IP address without a zone (a Host may
// be a literal; it matches no domain rule, as rules hold names): rules'
// domains hold only those bytes, but a wildcard matches by suffix, so
// whatever came before it would pass ("::ffff:192.0.2.1%x.allowed.example",
// an address literal whose zone ends in an allowed suffix), and a deny
// rule's suffix would be dodged by leaving the name out. Decide denies
// such a d outright.
func normalizeDomain(dst []byte, d string) ([]byte, bool) {
	d = strings.TrimSuffix(d, ".")
	start, numeric := len(dst), true
	for i := 0; i < len(d); i++ {
		c := d[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
			numeric = false
		case '0' <= c && c <= '9', c == '.':
		case 'a' <= c && c <= 'z', c == '-', c == '_':
			numeric = false
		default:
			a, err := netip.ParseAddr(d)
			return dst[:start], err == nil && a.Zone() == ""
		}
		dst = append(dst, c)
	}
	if numeric && isIPv4(d) {
		// An IPv4 literal is an address, as an IPv6 one is: no name a
		// domain rule matches ("*.3.4" would take 1.2.3.4).
		return dst[:start], true
	}
	return dst, true
}

// isIPv4 reports whether s, of digits and dots, is a dotted-quad IPv4
// address as netip reads one (no leading zeros), without the allocation
// netip.ParseAddr's error would cost on the decision path.
func isIPv4(s string) bool {
	parts, n, digits := 0, 0, 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if digits == 0 || digits > 3 || n > 255 || digits > 1 && s[i-digits] == '0' {
				return false
			}
			parts, n, digits = parts+1, 0, 0
			continue
		}
		n, digits = n*10+int(s[i]-'0'), digits+1
	}
	return parts == 4
}

func matchPort(rs []portRange, p uint16) bool {
	for _, r := range rs {
		if r.lo <= p && p <= r.hi {
			return true
		}
	}
	return false
}

func matchString(list []string, s string) bool {
	for _, e := range list {
		if strings.EqualFold(e, s) {
			return true
		}
	}
	return false
}

// clientPrefixes are a rule's client_cidrs, as written: the client's own
// address. Decisions ask a prefixSet built from them.
type clientPrefixes []netip.Prefix

// destPrefixes are a rule's dest_cidrs, as written; decisions ask a
// destSet built from them. They match the destination itself, and through
// the IPv4 addresses it carries for a NAT64 gateway, 6to4 relay or SIIT
// translator to unwrap (EmbeddedIPv4): 64:ff9b::a00:5 reaches 10.0.0.5
// through a NAT gateway, so a deny for 10.0.0.0/16 (the one that keeps
// clients out of the appliance's VPC above all) must cover it.
type destPrefixes struct {
	prefixes clientPrefixes
	// deny is set for a deny rule: it matches when any IPv4 address the
	// destination carries is in prefixes. A rule that lets flows through
	// matches only when every one is: an address in 64:ff9b:1::/48 reads
	// as several IPv4 addresses, one per RFC 6052 layout of /48 or
	// longer, and the translator delivers it to one of them; a rule for
	// 0.0.0.0/8 must not let 64:ff9b:1::c633:6407 (198.51.100.7 to a /96
	// translator) through because its /48 reading is 0.0.0.0.
	deny bool
}

// domainMapThreshold is the list length from which a set uses maps: below
// it, comparing lengths and bytes beats hashing.
const domainMapThreshold = 8

// domainSet holds a rule's domains, normalised (lower case, no trailing
// dot), wildcards without their "*.".
type domainSet struct {
	exact, wild   []string
	exactM, wildM map[string]struct{}
	// maxExact and maxWild are the lengths of the longest exact name and
	// wildcard suffix: no longer name or suffix can be in a map, so match
	// hashes none (a Host of 60 KB of one-letter labels would otherwise
	// cost one hash of the rest at each dot, quadratic in its length).
	maxExact, maxWild int
}

func newDomainSet(exact, wild []string) *domainSet {
	s := &domainSet{exact: exact, wild: wild}
	for _, e := range exact {
		s.maxExact = max(s.maxExact, len(e))
	}
	for _, w := range wild {
		s.maxWild = max(s.maxWild, len(w))
	}
	if len(exact) >= domainMapThreshold {
		s.exactM = make(map[string]struct{}, len(exact))
		for _, e := range exact {
			s.exactM[e] = struct{}{}
		}
	}
	if len(wild) >= domainMapThreshold {
		s.wildM = make(map[string]struct{}, len(wild))
		for _, w := range wild {
			s.wildM[w] = struct{}{}
		}
	}
	return s
}

// match reports whether the normalised domain d is in the set. The
// string(d) conversions in comparisons and map indexes do not allocate.
// It reads no more than the last maxWild+1 bytes of a d longer than
// maxExact, so its work is bounded by the set, whatever d's length.
func (s *domainSet) match(d []byte) bool {
	if len(d) == 0 {
		return false
	}
	if s.exactM != nil {
		if len(d) <= s.maxExact { // a longer d is in no map: not worth hashing
			if _, ok := s.exactM[string(d)]; ok {
				return true
			}
		}
	} else {
		for _, e := range s.exact {
			if string(d) == e {
				return true
			}
		}
	}
	// "*.w" matches d when d ends in "." + w with at least one byte before
	// that dot: subdomains only, never the apex w.
	if s.wildM != nil {
		// Only suffixes no longer than the longest wildcard can be in the
		// map: start at the dot before the first of those (i is the dot,
		// the suffix d[i+1:]), and never at d[0], as the apex is no match.
		for i := max(1, len(d)-s.maxWild-1); i < len(d)-1; i++ {
			if d[i] == '.' {
				if _, ok := s.wildM[string(d[i+1:])]; ok {
					return true
				}
			}
		}
	} else {
		for _, w := range s.wild {
			n := len(d) - len(w)
			if n >= 2 && d[n-1] == '.' && string(d[n:]) == w {
				return true
			}
		}
	}
	return false
}
