// Package policy holds the appliance's egress rules: an ordered list read
// from the `policy:` section of the YAML config, evaluated first match wins
// for every flow, and swapped atomically on reload.
//
// A rule matches a flow when every condition it states matches (AND); each
// condition is a list matched if any entry matches (OR); a condition left
// out matches anything. Conditions:
//
//   - domains: "name" matches that name exactly; "*.name" matches every
//     subdomain of name at any depth but not name itself (list both to get
//     both). Compared ASCII-case-insensitively with the flow's SNI or HTTP
//     host, one trailing dot ignored on either side. A flow without a name
//     (no SNI, no Host, plain TCP/UDP, ICMP) never matches a rule with
//     domains: such flows are matched on addresses and ports.
//   - dest_cidrs, client_cidrs: prefixes (or single addresses) containing
//     the destination or client address; IPv4-mapped IPv6 addresses are
//     compared as IPv4. A destination also matches through the IPv4
//     addresses it carries for a translator to unwrap (EmbeddedIPv4): a
//     deny rule when any of them is in its prefixes, other rules when all
//     are.
//   - ports: destination ports, single ("443") or ranges ("8000-8100"). ICMP
//     has no ports: a rule with ports never matches an ICMP flow.
//   - protocols: the flow's classified protocol: tls, http, tcp (TCP that is
//     neither TLS nor HTTP), quic, udp or icmp (echo, i.e. ping). A QUIC
//     flow is UDP too: it matches rules for quic and rules for udp, so a
//     rule written for all UDP still covers it.
//
// Policy-wide settings: mode (enforce, audit), default (the action when no
// rule matches), destination_check (dns, off: see DestinationCheck) and ech
// (allow, deny: see DenyECH).
//   - endpoints: GWLB endpoint IDs (vpce-…) the flow arrived through.
//
// Actions: bump (TLS: decrypt and inspect), splice (TLS: relay the
// encrypted bytes, log the SNI), allow, deny. Decide adapts the action to
// the flow's protocol so the caller has one case per protocol: for TLS and
// QUIC, allow is splice; for everything else (UDP and ICMP included) bump
// and splice mean allow. QUIC keeps bump: it cannot be decrypted, and the
// caller blocks it so that the client falls back to TLS over TCP, which is
// then bumped.
package policy

import (
	"net/netip"
)

// Action is what to do with a flow. The zero Action is Deny, so a zero
// Decision fails closed.
type Action uint8

// Actions.
const (
	Deny   Action = iota // refuse: TLS alert or RST, HTTP 403, TCP RST
	Allow                // relay (HTTP through the HTTP proxy, others as bytes)
	Bump                 // TLS: terminate with a minted leaf, inspect, re-encrypt
	Splice               // TLS: relay the encrypted stream untouched
)

var actionNames = [...]string{Deny: "deny", Allow: "allow", Bump: "bump", Splice: "splice"}

// String returns the action's config and access-record name.
func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "invalid"
}

// Mode is the policy's enforcement mode.
type Mode uint8

// Modes.
const (
	// Enforce applies the actions as written.
	Enforce Mode = iota
	// Audit never decrypts: every bump (rules and default) becomes splice,
	// so the appliance needs no CA and clients need not trust one. Other
	// actions, deny included, apply as written.
	Audit
)

// String returns "enforce" or "audit".
func (m Mode) String() string {
	if m == Audit {
		return "audit"
	}
	return "enforce"
}

// Subject protocols, as the proxy classifies flows (Subject.Protocol).
const (
	ProtoTLS  = "tls"
	ProtoHTTP = "http"
	ProtoTCP  = "tcp" // TCP that is neither TLS nor HTTP
	ProtoUDP  = "udp"
	ProtoQUIC = "quic" // UDP whose first datagrams are a QUIC Initial
	ProtoICMP = "icmp" // ICMP and ICMPv6 echo (ping); the flow has no ports
)

// DefaultRule is the Decision.Rule when no rule matched.
const DefaultRule = "default"

// TrustPageRule is the rule records name for the appliance's own CA page,
// which no policy decides. Like DefaultRule, no rule may take the name.
const TrustPageRule = "trust-page"

// Subject describes a flow to decide on.
type Subject struct {
	// Protocol is one of ProtoTLS, ProtoHTTP, ProtoTCP, ProtoUDP,
	// ProtoQUIC, ProtoICMP. Anything else matches only rules without a protocols
	// condition.
	Protocol string
	// Domain is the TLS or QUIC SNI or the HTTP request's host (without
	// port), as the client sent it; "" when there is none. Callers refuse
	// names with an empty label (sniff.EmptyLabel) before asking: rules
	// ignore one trailing dot only, so "bad.example.." would pass a deny
	// for bad.example.
	Domain string
	// Dest is the original destination address and port (port 0 for
	// ICMP, which no ports condition matches).
	Dest netip.AddrPort
	// Client is the client's address.
	Client netip.Addr
	// Endpoint is the GWLB endpoint ID, e.g. "vpce-0123456789abcdef0".
	Endpoint string
}

// Decision is the outcome of Decide.
type Decision struct {
	// Action, adapted to the flow's protocol: for TLS, Bump, Splice or
	// Deny (never Allow); for the rest, Allow or Deny.
	Action Action
	// Rule is the name of the matching rule, or DefaultRule.
	Rule string
	// AllowUnverifiedUpstream lets a bumped connection proceed when the
	// upstream certificate fails verification. Only ever true with Bump.
	AllowUnverifiedUpstream bool
	// ByName is true when the matching rule has a domains condition: the
	// decision rests on a name the client chose, which proves nothing about
	// the destination. When it lets the flow through, DestinationCheck says
	// how the caller must tie the name to the destination address.
	ByName bool
	// Policy is the ID of the policy that decided (Policy.ID), for the
	// record: carried with the decision, so that a reload between the
	// decision and the record cannot mislabel it.
	Policy string
}

// DestinationCheck is how a decision made on a name is tied to the
// destination address (the policy's destination_check setting).
type DestinationCheck uint8

// Destination checks.
const (
	// CheckDNS: a flow let through by a rule with domains goes on only if
	// its destination is an address the name resolves to (from the DNS
	// answers relayed to the endpoint's clients, or the appliance's own
	// lookup). In audit mode a mismatch is recorded, not denied. A bumped
	// connection whose upstream certificate was verified for the name needs
	// no lookup: the certificate is the proof.
	CheckDNS DestinationCheck = iota
	// CheckOff trusts the name the client sent.
	CheckOff
)

// String returns "dns" or "off".
func (c DestinationCheck) String() string {
	if c == CheckOff {
		return "off"
	}
	return "dns"
}

// Policy is a parsed, immutable policy, safe for concurrent use.
type Policy struct {
	id        string // ID
	mode      Mode
	def       Action
	destCheck DestinationCheck
	denyECH   bool
	rules     []rule
	addrs     []ruleAddrs // the rules' address conditions, indexed (indexAddrs)
}

// Protocol bits; 0 means "not a known protocol".
const (
	bitTLS uint8 = 1 << iota
	bitHTTP
	bitTCP
	bitUDP
	bitICMP
	bitQUIC
)

func protoBit(p string) uint8 {
	switch p {
	case ProtoTLS:
		return bitTLS
	case ProtoHTTP:
		return bitHTTP
	case ProtoTCP:
		return bitTCP
	case ProtoUDP:
		return bitUDP
	case ProtoICMP:
		return bitICMP
	case ProtoQUIC:
		return bitQUIC
	}
	return 0
}

// subjectBits is the set of protocol bits a subject of protocol p matches:
// QUIC is UDP as well.
func subjectBits(p string) uint8 {
	b := protoBit(p)
	if b == bitQUIC {
		b |= bitUDP
	}
	return b
}

type portRange struct{ lo, hi uint16 }

type rule struct {
	name            string
	action          Action // after the mode is applied
	allowUnverified bool
	// Conditions; the zero value of each means "any".
	protos    uint8
	ports     []portRange
	endpoints []string
	clients   clientPrefixes
	dests     *destPrefixes
	domains   *domainSet
}

// Mode returns the policy's mode.
func (p *Policy) Mode() Mode { return p.mode }

// DefaultAction returns the action for flows no rule matches (after the
// mode is applied; not adapted to a protocol).
func (p *Policy) DefaultAction() Action { return p.def }

// DestinationCheck returns how decisions made on names are tied to the
// destination address.
func (p *Policy) DestinationCheck() DestinationCheck { return p.destCheck }

// DenyECH reports whether a ClientHello offering Encrypted Client Hello is
// denied: its outer SNI is a cover name that proves nothing about the
// server the client means.
func (p *Policy) DenyECH() bool { return p.denyECH }

// NamesMatter reports whether any decision can depend on what a client
// sends rather than on addresses and ports alone: a rule with domains or
// with a protocols condition that tells TLS, HTTP or QUIC apart, or a bump
// or splice anywhere. When true, a flow that looks like QUIC but cannot be
// read must be denied: relaying it as opaque bytes would let it past those
// rules. TCP connections ask TCPNamesMatter.
func (p *Policy) NamesMatter() bool {
	if p.def == Bump || p.def == Splice || p.denyECH {
		return true
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.domains != nil || r.protos&(bitTLS|bitHTTP|bitQUIC) != 0 ||
			r.action == Bump || r.action == Splice {
			return true
		}
	}
	return false
}

// TCPNamesMatter is NamesMatter for a TCP connection: a rule whose
// protocols condition names tcp and that lets a flow through counts too.
// It tells TCP that is neither TLS nor HTTP from TLS and HTTP, so a
// ClientHello or request head that cannot be read, relayed as tcp, would
// match a rule written to exclude it, while the same bytes read cleanly
// would not. A rule that denies tcp cannot let such bytes through, only
// deny more of them as tcp, so it makes nothing refused (review r5s28 F1:
// a deny for tcp to another network refused unreadable bytes everywhere).
// UDP flows keep NamesMatter: such a rule never matches them.
func (p *Policy) TCPNamesMatter() bool {
	if p.NamesMatter() {
		return true
	}
	for i := range p.rules {
		if p.rules[i].protos&bitTCP != 0 && p.rules[i].action != Deny {
			return true
		}
	}
	return false
}

// Len returns the number of rules.
func (p *Policy) Len() int { return len(p.rules) }

// NeedsCA reports whether any decision can be Bump, i.e. the appliance
// needs its interception CA. Always false in Audit mode.
func (p *Policy) NeedsCA() bool {
	if p.def == Bump {
		return true
	}
	for i := range p.rules {
		if p.rules[i].action == Bump {
			return true
		}
	}
	return false
}

// maxFastDomain is the longest flow domain normalised on the stack; longer
// ones (not valid DNS names, but a client can send them) cost an allocation.
const maxFastDomain = 256

// Decide returns the first matching rule's decision, or the default's. It
// does not allocate (for domains up to 256 bytes) and is safe for
// concurrent use. A nil Policy denies everything.
func (p *Policy) Decide(f Subject) Decision {
	if p == nil {
		return Decision{Action: Deny, Rule: DefaultRule}
	}
	pb := subjectBits(f.Protocol)
	var buf [maxFastDomain]byte
	dom, ok := normalizeDomain(buf[:0], f.Domain)
	if !ok { // no host's name: no rule may decide on it
		d := decision("", Deny, false, pb)
		d.Policy = p.id
		return d
	}
	// Addresses from a dual-stack socket may be IPv4-mapped; rules hold
	// IPv4 prefixes as IPv4. A zone would make Contains always false.
	dest := f.Dest.Addr().Unmap().WithZone("")
	port := f.Dest.Port()
	client := f.Client.Unmap().WithZone("")

	// Cheapest conditions first, so that misses cost little.
	addrs := p.addrs
	for i := range p.rules {
		r, a := &p.rules[i], &addrs[i]
		if r.protos != 0 && r.protos&pb == 0 {
			continue
		}
		if r.ports != nil && !matchPort(r.ports, port) {
			continue
		}
		if r.endpoints != nil && !matchString(r.endpoints, f.Endpoint) {
			continue
		}
		if a.clients != nil && !a.clients.contains(client) {
			continue
		}
		if a.dests != nil && !a.dests.contains(dest) {
			continue
		}
		if r.domains != nil && !r.domains.match(dom) {
			continue
		}
		d := decision(r.name, r.action, r.allowUnverified, pb)
		d.Policy = p.id
		d.ByName = r.domains != nil
		return d
	}
	d := decision(DefaultRule, p.def, false, pb)
	d.Policy = p.id
	return d
}

// ID names the policy in the records it decides: the first 12 hex digits
// of the SHA-256 of the bytes it was parsed from (FileHash, the hash
// /stats and the logs show), whether they came from a file or are built
// in. "" for a nil Policy, which denies everything and was parsed from
// nothing.
func (p *Policy) ID() string {
	if p == nil {
		return ""
	}
	return p.id
}

func decision(name string, a Action, allowUnverified bool, pb uint8) Decision {
	named := pb&(bitTLS|bitQUIC) != 0 // encrypted with a name: bump and splice apply
	switch {
	case named && a == Allow:
		a = Splice
	case !named && (a == Bump || a == Splice):
		a = Allow
	}
	return Decision{Action: a, Rule: name, AllowUnverifiedUpstream: allowUnverified && a == Bump && pb == bitTLS}
}

// DecideEarly decides a TCP flow on its addresses alone, before any of its
// bytes are read, when that answer is certain: the first rule that could
// match is a deny that looks at neither protocol nor domain, or no rule
// could match and the default denies. ok is false whenever what the client
// sends could still change the outcome. The proxy uses it to refuse such
// flows without ever dialling their destination.
func (p *Policy) DecideEarly(f Subject) (d Decision, ok bool) {
	if p == nil {
		return Decision{Action: Deny, Rule: DefaultRule}, true
	}
	dest := f.Dest.Addr().Unmap().WithZone("")
	client := f.Client.Unmap().WithZone("")
	addrs := p.addrs
	for i := range p.rules {
		r, a := &p.rules[i], &addrs[i]
		if r.protos != 0 && r.protos&(bitTLS|bitHTTP|bitTCP) == 0 {
			continue // a rule for UDP or ICMP only
		}
		if (r.ports != nil && !matchPort(r.ports, f.Dest.Port())) ||
			(r.endpoints != nil && !matchString(r.endpoints, f.Endpoint)) ||
			(a.clients != nil && !a.clients.contains(client)) ||
			(a.dests != nil && !a.dests.contains(dest)) {
			continue
		}
		if r.protos != 0 || r.domains != nil || r.action != Deny {
			return Decision{}, false
		}
		return Decision{Action: Deny, Rule: r.name, Policy: p.id}, true
	}
	if p.def == Deny {
		return Decision{Action: Deny, Rule: DefaultRule, Policy: p.id}, true
	}
	return Decision{}, false
}

// OnlyNameAllows reports whether a TCP flow with f's addresses can be let
// through by nothing but a name: without one, whatever it turns out to be
// (TLS, HTTP, other TCP), the decision is deny. Rules with domains never
// match a flow without a name, so that is the decision with those rules
// left out, and a flow with a name either meets a rule with domains first
// or is denied all the same. The proxy then reads the client's first bytes
// before it dials anything: dialled first, a destination the policy denies
// would still be reached from the appliance's address, and a client would
// learn from a RST or a handshake which of them are open.
func (p *Policy) OnlyNameAllows(f Subject) bool {
	f.Domain = ""
	for _, proto := range [...]string{ProtoTLS, ProtoHTTP, ProtoTCP} {
		f.Protocol = proto
		if p.Decide(f).Action != Deny {
			return false
		}
	}
	return true
}
