package policy

// The parsers of a rule's values: endpoint IDs, domains, CIDRs and ports.

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// validEndpoint reports whether id (lower case) is a GWLB endpoint ID as
// flows are named by it: "vpce-" and 17 hex digits (netstack's
// EndpointName formats the 64-bit ID of the GENEVE header with %017x, so
// the first is 0). Rules compare IDs whole, so any other spelling (a digit
// dropped or added) would parse and never match: a deny rule that denies
// nothing.
func validEndpoint(id string) bool {
	hex, ok := strings.CutPrefix(id, "vpce-")
	if !ok || len(hex) != 17 || hex[0] != '0' {
		return false
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func (ps *parser) domains(v *yaml.Node, r *rule) error {
	items, err := ps.list(v, "domains")
	if err != nil {
		return err
	}
	var exact, wild []string
	// A set, not a scan of the list so far: a blocklist of 10^5 names took
	// minutes to parse that way, before the appliance could start.
	seen := make(map[string]struct{}, len(items))
	for _, it := range items {
		d, isWild, problem := normalizePattern(it.Value)
		if problem != "" {
			return ps.errf(it, "invalid domain %q: %s", it.Value, problem)
		}
		key := d
		if isWild {
			key = "*." + d
		}
		if _, dup := seen[key]; dup {
			continue
		}
		seen[key] = struct{}{}
		if isWild {
			wild = append(wild, d)
		} else {
			exact = append(exact, d)
		}
	}
	r.domains = newDomainSet(exact, wild)
	return nil
}

// normalizePattern lower-cases a domain pattern, drops one trailing dot and
// a leading "*.", and says what is wrong with it, if anything.
func normalizePattern(s string) (d string, wild bool, problem string) {
	d = strings.ToLower(strings.TrimSuffix(s, "."))
	if d == "*" {
		return "", false, "a lone * would match every name; leave domains out instead"
	}
	if rest, ok := strings.CutPrefix(d, "*."); ok {
		d, wild = rest, true
	}
	if d == "" {
		return "", false, "empty"
	}
	if len(d) > 253 {
		return "", false, "longer than 253 bytes"
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.':
			// A dot left at the end (the pattern ended ".."): Decide
			// drops only one trailing dot of a name, so the pattern
			// could never be matched.
			if i == 0 || d[i-1] == '.' || i == len(d)-1 {
				return "", false, "empty label"
			}
		case c == '*':
			return "", false, "* is only allowed as a whole first label (*.example.com)"
		case c >= 0x80:
			return "", false, "not ASCII: write the xn-- (punycode) form"
		default:
			return "", false, fmt.Sprintf("%q is not allowed in a name (no schemes, ports or paths)", c)
		}
	}
	if _, err := netip.ParseAddr(d); err == nil && !wild {
		// Hosts that are addresses match no domain rule (Decide), so
		// the rule would never apply; rules on addresses use dest_cidrs.
		return "", false, "an IP address: match addresses with dest_cidrs"
	}
	return d, wild, ""
}

func (ps *parser) prefixes(v *yaml.Node, key string) ([]netip.Prefix, error) {
	items, err := ps.list(v, key)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(items))
	for _, it := range items {
		p, detail, ok := parseCIDR(it.Value)
		if !ok {
			return nil, ps.errf(it, "%s: invalid CIDR %q%s", key, it.Value, detail)
		}
		out = append(out, p)
	}
	return out, nil
}

// parseCIDR parses a prefix or a single address; on failure it says why
// (possibly with an empty detail). A prefix with host bits set is refused:
// "10.0.0.1/8" is more likely a typo for /32 than a way of writing
// 10.0.0.0/8. IPv4-mapped IPv6 prefixes become IPv4 ones, as Decide unmaps
// addresses.
func parseCIDR(s string) (p netip.Prefix, detail string, ok bool) {
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, "", false
		}
		if m := p.Masked(); m != p {
			return p, fmt.Sprintf(": host bits set (did you mean %q?)", m.String()), false
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return p, "", false
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, "", true
}

func (ps *parser) ports(v *yaml.Node, r *rule) error {
	items, err := ps.list(v, "ports")
	if err != nil {
		return err
	}
	for _, it := range items {
		pr, err := parsePorts(it)
		if err != nil {
			return ps.errf(it, "ports: %v", err)
		}
		r.ports = append(r.ports, pr)
	}
	return nil
}

var errPortSyntax = errors.New("want a port (443) or a range (\"8000-8100\")")

// parsePorts parses an integer node or a "lo-hi" / "port" string node.
func parsePorts(n *yaml.Node) (portRange, error) {
	if n.ShortTag() == "!!int" {
		// Plain decimal only: YAML reads 0443 as octal (port 291), and
		// takes 0x1bb, 0o443, +443 and 1_000 as numbers too.
		v, err := strconv.ParseInt(n.Value, 10, 32)
		if err != nil || len(n.Value) > 1 && n.Value[0] == '0' || n.Value[0] == '+' {
			return portRange{}, fmt.Errorf("port %s: %w", n.Value, errPortSyntax)
		}
		if v < 1 || v > 65535 {
			return portRange{}, fmt.Errorf("port %d out of range 1-65535", v)
		}
		return portRange{uint16(v), uint16(v)}, nil
	}
	if n.ShortTag() != "!!str" {
		return portRange{}, fmt.Errorf("%q: %w", n.Value, errPortSyntax)
	}
	lo, hi, isRange := strings.Cut(n.Value, "-")
	if !isRange {
		hi = lo
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil {
		return portRange{}, fmt.Errorf("invalid port range %q: %w", n.Value, errPortSyntax)
	}
	if l == 0 || h == 0 {
		return portRange{}, fmt.Errorf("invalid port range %q: port 0", n.Value)
	}
	if l > h {
		return portRange{}, fmt.Errorf("invalid port range %q: start above end", n.Value)
	}
	return portRange{uint16(l), uint16(h)}, nil
}
