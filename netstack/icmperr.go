package netstack

import (
	"encoding/binary"
	"time"
)

// Path MTUs below which a "fragmentation needed" (ICMPv4 type 3, code 4)
// or an ICMPv6 Packet Too Big is dropped rather than handed to the stack.
// gVisor takes any MTU such an error names: below IPv4's 68 or IPv6's 1280
// it takes 0, and TCP then cuts its segments to one byte and never raises
// them again. It checks neither the quoted sequence number nor who sent
// the error, so a forged one would make a connection send a packet per
// byte. 552 is Linux's floor (net.ipv4.route.min_pmtu); 1280 is the least
// MTU an IPv6 link may have (RFC 8200), so no real path is smaller.
const (
	minPathMTUv4 = 552
	minPathMTUv6 = 1280
)

// pathMTUInterval is the least time between two "fragmentation needed"
// or Packet Too Big errors the stack takes about one TCP flow. Each error
// naming a smaller MTU than the last makes gVisor send again all the
// connection has in flight; the sequence check (tcpseq.go) leaves that to
// whoever sees the connection's sequence numbers (on the path, or the
// client itself), and this bounds how often. A path with several smaller
// links sends one error per link, each after the retransmission the last
// one caused; one that comes too soon is dropped, and sent again about
// the segment's retransmission after a timeout, which gVisor waits 200 ms
// at least for (its minimum RTO): longer than this, so it is taken then.
const pathMTUInterval = 100 * time.Millisecond

// checkICMPError decides whether an ICMP error from a client's side, about
// flow, may reach the stack. p is the error as ParsePacket read it from
// inner (its flow is the quoted packet's); ParsePacket has checked that the
// ICMP header is there.
//
// A "fragmentation needed" or Packet Too Big may come from anyone (a
// router on the way to the client too), above the MTU floor; about a TCP
// flow, it must quote a segment in flight (tcpseq.go), and come at least
// pathMTUInterval after the last one taken. Any other
// error must come from the flow's client itself. The appliance's replies
// reach a client through the GWLB, so an unreachable about one is the
// client host's own (a closed port); gVisor acts on the quoted addresses
// alone: a port unreachable ends a UDP flow (its reads fail with
// ECONNREFUSED, which the relay takes for the client's own end), and a
// host, network or port unreachable fails a connection being set up.
// From any other address it is another client's forgery about a
// neighbour's flow, and the VPC keeps a client from sending as another.
// A real router's unreachable dropped here costs the flow only time: it
// ends as if nothing came back.
//
// now is the time the error came in (monoclock.Now).
func checkICMPError(p *Packet, inner []byte, flow *Flow, now int64) DropReason {
	if mtu, ok := pathMTU(inner[p.Payload:], p.IPv6); ok {
		if (p.IPv6 && mtu < minPathMTUv6) || (!p.IPv6 && mtu < minPathMTUv4) {
			return DropICMPMTUTooSmall
		}
		if p.Proto != protoTCP {
			return DropNone
		}
		// Only about a segment the stack sent to the client and has in
		// flight (tcpseq.go).
		if !p.hasSeq || !flow.tcpInFlight(p.seq) {
			return DropICMPMTUBadSequence
		}
		// Only errors that passed every other check take the flow's
		// turn, so a forger cannot spend a router's.
		last := flow.mtuTaken.Load()
		if now-last < int64(pathMTUInterval) || !flow.mtuTaken.CompareAndSwap(last, now) {
			return DropICMPMTUTooSoon
		}
		return DropNone
	}
	if p.Src != flow.key.ClientAddr {
		return DropICMPErrorNotFromClient
	}
	return DropNone
}

// pathMTU returns the MTU an ICMP error names, if it is a "fragmentation
// needed" (ICMPv4) or a Packet Too Big (ICMPv6).
func pathMTU(icmp []byte, v6 bool) (mtu uint32, ok bool) {
	if v6 {
		if icmp[0] != 2 {
			return 0, false
		}
		return binary.BigEndian.Uint32(icmp[4:8]), true
	}
	if icmp[0] != 3 || icmp[1] != 4 {
		return 0, false
	}
	return uint32(binary.BigEndian.Uint16(icmp[6:8])), true
}
