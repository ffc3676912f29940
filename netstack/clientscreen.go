package netstack

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// screenClient says why a client's packet, as ParsePacket read it into p
// (pkt cut to p.Len), of GWLB endpoint endpoint, is dropped before the flow
// table (DropNone: it is not): a source no client has, ICMP the appliance
// takes from no one, a destination the stack never delivers to, or what
// the stack would drop by its headers (stackdrops.go). The checksums cost a
// pass over the bytes, so they are checked here only for the tap's sake.
// An echo request, which the echo relay takes instead of the stack, follows
// the same rules, and its IPv4 header checksum, a few words, is checked
// with or without a tap, so that what is relayed does not depend on one.
func (s *Server) screenClient(p *Packet, pkt []byte, endpoint uint64) DropReason {
	switch {
	case p.BadClientSource():
		return DropInnerBadAddress
	case p.UnsupportedFromClient():
		return DropInnerUnsupported
	case undeliverableDest(p, s.cfg.AllowLoopback):
		s.warnBadDestination(p, endpoint)
		return DropInnerBadDestination
	}
	reason := stackRefuses(p, pkt)
	if reason == DropNone && (s.cfg.Tap != nil && sumsFail(p, pkt) || echoSumFails(p, pkt)) {
		reason = DropInnerBadChecksum
	}
	return reason
}

// undeliverableDest reports whether p, a client's TCP or UDP packet, goes to
// a destination the stack never hands to a handler, so that the proxy never
// sees it, refuses it or records it: a multicast one (IPv4 224.0.0.0/4,
// IPv6 ff00::/8), which the stack takes only for a group it joined and
// then has no endpoint for; the limited broadcast 255.255.255.255, which it
// has no endpoint for either; a loopback one (127.0.0.0/8, ::1), a martian
// on the stack's NIC, unless allowLoopback (tests); and, for TCP, an
// unspecified one (0.0.0.0, ::), which no connection has (UDP to it reaches
// the proxy, which refuses it). Taken in, each made a flow charged to its
// client and reached the capture tap, then vanished in the stack with no
// answer, no record and no count. An echo request to one is the echo
// relay's, which the proxy refuses; an ICMP error, or a later fragment,
// makes no flow (its first fragment, dropped here, was not taken in).
func undeliverableDest(p *Packet, allowLoopback bool) bool {
	if p.ICMPError || p.Fragment || (p.Proto != protoTCP && p.Proto != protoUDP) {
		return false
	}
	if p.IPv6 {
		return p.Dst[0] == 0xff || (p.Dst == ipv6Loopback && !allowLoopback) ||
			(p.Dst == [16]byte{} && p.Proto == protoTCP)
	}
	// parseIPv4 stores the destination IPv4-mapped.
	a := [4]byte(p.Dst[12:])
	return a[0]&0xf0 == 0xe0 || a == [4]byte{255, 255, 255, 255} || (a[0] == 127 && !allowLoopback) ||
		(a == [4]byte{} && p.Proto == protoTCP)
}

// warnBadDestination logs a client's packet dropped for its destination
// (inner_bad_destination) once a minute at most, naming the latest: no
// access record is written for one (the stack could send no answer from
// such an address that the client would take, and the flow table keeps
// nothing to make a record per flow by), so the log says who sends them.
func (s *Server) warnBadDestination(p *Packet, endpoint uint64) {
	now := monoclock.Now()
	last := s.badDestWarned.Load()
	if now-last < int64(time.Minute) || !s.badDestWarned.CompareAndSwap(last, now) {
		return
	}
	proto := "tcp"
	if p.Proto == protoUDP {
		proto = "udp"
	}
	slog.Warn("dropped a client's packet to a destination the stack never delivers to (inner_bad_destination); such packets are counted, not recorded, and logged once a minute at most",
		"endpoint", FlowInfo{Endpoint: endpoint}.EndpointName(), "protocol", proto,
		"client", netip.AddrPortFrom(p.SrcAddr(), p.SrcPort), "dest", netip.AddrPortFrom(p.DstAddr(), p.DstPort),
		"dropped", s.stats.drops[DropInnerBadDestination].Load()+1)
}
