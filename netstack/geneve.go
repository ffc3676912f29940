package netstack

import "encoding/binary"

// GENEVE (RFC 8926) constants and the AWS Gateway Load Balancer option TLVs.
const (
	// GenevePort is the UDP port the GWLB sends to and listens on.
	GenevePort = 6081

	// EtherTypeIPv4 and EtherTypeIPv6 are the GENEVE protocol types the GWLB uses.
	EtherTypeIPv4 = 0x0800
	EtherTypeIPv6 = 0x86DD

	// AWSOptionClass is the option class of the GWLB's TLVs.
	AWSOptionClass = 0x0108
	// AWSOptionEndpoint carries the 8-byte GWLB endpoint ID.
	AWSOptionEndpoint = 1
	// AWSOptionAttachment carries the 8-byte attachment ID.
	AWSOptionAttachment = 2
	// AWSOptionFlowCookie carries the 4-byte flow cookie.
	AWSOptionFlowCookie = 3

	genevebase = 8
	// geneveCritical is the critical bit of an option's type (RFC 8926
	// §3.5). None of the AWS options has it.
	geneveCritical = 0x80
	// MaxGeneveHeader is the largest possible GENEVE header: the 8 fixed
	// bytes plus 63 words of options.
	MaxGeneveHeader = genevebase + 63*4
	// AWSGeneveHeader is the size of a header carrying exactly the three
	// AWS options (8 + 12 + 12 + 8).
	AWSGeneveHeader = genevebase + 4 + 8 + 4 + 8 + 4 + 4
)

// Header is a parsed GENEVE header. It holds no references into the packet,
// so parsing allocates nothing; Len tells where the inner packet starts.
type Header struct {
	Len        int    // header length in bytes, options included
	Protocol   uint16 // EtherTypeIPv4 or EtherTypeIPv6
	VNI        uint32
	Endpoint   uint64 // GWLB endpoint ID
	Attachment uint64 // GWLB attachment ID
	FlowCookie uint32
}

// DropReason says why a datagram or packet was dropped. Reasons index the
// drop counters directly, so counting a drop never allocates.
type DropReason uint8

// Drop reasons; DropNone means the packet was accepted.
const (
	DropNone DropReason = iota
	DropTruncated
	DropVersion
	DropControl
	DropOptionLength
	DropProtocol
	DropMissingOption
	DropInnerMalformed
	DropInnerMismatch
	DropFlowTableFull
	DropNoFlow
	DropTooBig
	DropSendError
	DropICMPUnavailable
	DropUnknownSender
	DropClientFlowLimit
	DropEndpointLimit
	DropFragmentNoFlow
	DropDatagramTooBig
	DropICMPErrorNoFlow
	DropEchoFragmented
	DropMemoryPressure
	DropInnerUnsupported
	DropStackEcho
	DropICMPMTUTooSmall
	DropICMPErrorNotFromClient
	DropICMPMTUBadSequence
	DropICMPMTUTooSoon
	DropCriticalOption
	DropStrayFromDestination
	DropInnerBadAddress
	DropInnerRefused
	DropInnerBadChecksum
	DropSynWaitAbandoned
	DropSynWaiting
	DropTCPNoConnection
	DropInnerBadDestination
	DropTCPSetupsFull
	DropUDPCreateFailed
	dropReasons
)

var dropReasonNames = [dropReasons]string{
	DropNone:            "none",
	DropTruncated:       "truncated",
	DropVersion:         "bad_version",
	DropControl:         "control_packet",
	DropOptionLength:    "bad_option_length",
	DropProtocol:        "bad_protocol",
	DropMissingOption:   "missing_aws_option",
	DropInnerMalformed:  "inner_malformed",
	DropInnerMismatch:   "inner_protocol_mismatch",
	DropFlowTableFull:   "flow_table_full",
	DropNoFlow:          "reply_without_flow",
	DropTooBig:          "reply_too_big",
	DropSendError:       "send_error",
	DropICMPUnavailable: "icmp_unavailable",
	DropUnknownSender:   "unknown_sender",
	DropClientFlowLimit: "client_flow_limit",
	DropEndpointLimit:   "endpoint_limit",
	DropFragmentNoFlow:  "fragment_without_flow",
	DropDatagramTooBig:  "datagram_too_big",
	DropICMPErrorNoFlow: "icmp_error_without_flow",
	DropEchoFragmented:  "echo_fragmented",
	DropMemoryPressure:  "memory_pressure",
	// A packet whose headers end in anything but TCP, UDP or ICMP: the
	// appliance relays nothing else, and gVisor may read further into
	// such a packet than ParsePacket (packet.go).
	DropInnerUnsupported: "inner_protocol_unsupported",
	// ICMP echo a stack wrote: only the echo relay answers echo (icmp.go).
	DropStackEcho: "stack_echo",
	// A "fragmentation needed" or Packet Too Big naming a path MTU below
	// 552 (IPv4) or 1280 (IPv6), which no real path has: a forged one
	// would cut a connection's segments to a byte (icmperr.go).
	DropICMPMTUTooSmall: "icmp_mtu_too_small",
	// An ICMP error other than those two from anyone but the client of
	// the flow it is about: another client's forgery (icmperr.go).
	DropICMPErrorNotFromClient: "icmp_error_not_from_client",
	// A "fragmentation needed" or Packet Too Big about a TCP flow that
	// quotes no segment the stack has in flight to the client: a forgery
	// by someone who cannot see the connection (tcpseq.go).
	DropICMPMTUBadSequence: "icmp_mtu_bad_sequence",
	// One about a TCP flow less than pathMTUInterval after the last one
	// the stack took: each makes the connection send its data in flight
	// again (icmperr.go).
	DropICMPMTUTooSoon: "icmp_mtu_too_soon",
	// A GENEVE option with the critical bit set in its type that the
	// appliance does not process: RFC 8926 §3.5 says such a packet MUST be
	// dropped (geneveCritical).
	DropCriticalOption: "critical_option",
	// A TCP segment that would make a new flow whose reverse is a flow the
	// table holds, from the destination's side (D:dp -> V:vp) of a
	// connection the appliance terminates, which never sends through the
	// GWLB: any segment but a bare SYN, and a bare SYN while V's connection
	// is live. Taken in, it would show an IDS reading the feed a RST or data
	// of V's connection, and the stack would answer it with a RST whose
	// sequence number the sender chose (flowTable.TouchSegment, TouchSyn).
	DropStrayFromDestination: "stray_from_destination",
	// An inner IPv6 packet with an IPv4-mapped source or destination, or a
	// client's packet from a source no real packet has: IPv6 multicast,
	// unspecified or loopback; IPv4 multicast, broadcast, 0.0.0.0/8 or
	// 127.0.0.0/8. gVisor and Linux drop them (packet.go).
	DropInnerBadAddress: "inner_bad_address",
	// A client's packet the stack would drop by its headers alone: IPv4
	// options or IPv6 extension options it refuses, a routing header with
	// segments left, a TCP data offset below 20 or past the segment, a UDP
	// length past the datagram, a TCP segment without ACK, SYN or RST.
	// Taken in, it would reach the capture tap (stackdrops.go).
	DropInnerRefused: "inner_refused",
	// A client's packet whose IPv4 header, TCP or UDP checksum does not
	// hold; counted only while a capture tap is on (without one the stack
	// drops it itself), so that the tap never shows it (stackdrops.go).
	DropInnerBadChecksum: "inner_bad_checksum",
	// A client's SYN that waited for the stack to let go of the reset
	// connection on its 4-tuple and was then not taken in: its flow left
	// the table meanwhile, so the flow table would no longer bound what
	// the stack takes in (synwait.go). The client sends it again.
	DropSynWaitAbandoned: "syn_wait_abandoned",
	// A client's bare SYN of a flow whose SYN waits (synwait.go): a copy
	// of the waiting one, or the waiting one itself, replaced by a SYN
	// with another ISN. Taken in at once, it found the old connection and
	// was answered with a RST, which refuses the client's connect.
	DropSynWaiting: "syn_waiting",
	// The first fragment of a client's TCP segment with data that no
	// connection of its stack can take, while a capture is on
	// (tapWithholds): shown to an IDS, a decoy; the stack would answer it
	// with a RST. Its later fragments are fragment_without_flow.
	DropTCPNoConnection: "tcp_no_connection",
	// A client's TCP or UDP packet to a destination the stack never
	// delivers to: multicast, the limited broadcast, loopback (unless
	// Config.AllowLoopback) and, for TCP, unspecified. Taken in, it made a
	// flow and reached the capture tap, then the stack dropped it
	// uncounted, before the proxy could refuse or record it
	// (clientscreen.go).
	DropInnerBadDestination: "inner_bad_destination",
	// A client's SYN the stack dropped because all TCPOptions.MaxInFlight
	// of its slots for connections being set up were taken, by attempts of
	// clients each under its share (setups.go): gVisor's forwarder drops it
	// before the handler sees it (Stats().TCP.ForwardMaxInFlightDrop, which
	// every stack counts into counters.synsPastInFlight). The client sends
	// it again.
	DropTCPSetupsFull: "tcp_setups_full",
	// A client's UDP datagram of a new flow for which the stack could make
	// no endpoint (its 4-tuple's taken, say, by a datagram of the same new
	// flow another reader handed in at the same moment).
	DropUDPCreateFailed: "udp_create_failed",
}

// String returns the reason's name as used in /stats and /metrics.
func (r DropReason) String() string {
	if r < dropReasons {
		return dropReasonNames[r]
	}
	return "unknown"
}

// ParseHeader parses the GENEVE header at the start of b and takes the three
// AWS options from it. Unknown options are skipped here; they stay in the
// header bytes, which the return path echoes unchanged. An unknown option
// marked critical is not skipped: RFC 8926 §3.5 says the packet MUST be
// dropped. Every option is read, so the fixed header's C bit (critical
// options present), a hint for endpoints that do not read options, is not
// needed. A packet without an inner payload is truncated.
func ParseHeader(b []byte) (Header, DropReason) {
	var h Header
	if len(b) < genevebase {
		return h, DropTruncated
	}
	if b[0]>>6 != 0 {
		return h, DropVersion
	}
	if b[1]&0x80 != 0 { // O bit: a control message, never inner traffic
		return h, DropControl
	}
	h.Len = genevebase + int(b[0]&0x3f)*4
	if len(b) <= h.Len {
		return h, DropTruncated
	}
	h.Protocol = binary.BigEndian.Uint16(b[2:4])
	if h.Protocol != EtherTypeIPv4 && h.Protocol != EtherTypeIPv6 {
		return h, DropProtocol
	}
	h.VNI = binary.BigEndian.Uint32(b[4:8]) >> 8

	const haveAll = 1<<AWSOptionEndpoint | 1<<AWSOptionAttachment | 1<<AWSOptionFlowCookie
	var have uint8
	for off := genevebase; off < h.Len; {
		if h.Len-off < 4 {
			return h, DropOptionLength
		}
		class := binary.BigEndian.Uint16(b[off : off+2])
		typ := b[off+2]
		n := int(b[off+3]&0x1f) * 4
		data := off + 4
		if data+n > h.Len {
			return h, DropOptionLength
		}
		if typ&geneveCritical != 0 {
			// No option this parser knows is critical, so this one
			// is unknown; an AWS type with the bit set (0x81) too.
			return h, DropCriticalOption
		}
		if class == AWSOptionClass {
			switch {
			case typ == AWSOptionEndpoint && n == 8:
				h.Endpoint = binary.BigEndian.Uint64(b[data:])
			case typ == AWSOptionAttachment && n == 8:
				h.Attachment = binary.BigEndian.Uint64(b[data:])
			case typ == AWSOptionFlowCookie && n == 4:
				h.FlowCookie = binary.BigEndian.Uint32(b[data:])
			case typ >= AWSOptionEndpoint && typ <= AWSOptionFlowCookie:
				return h, DropOptionLength // a known option of the wrong size
			default:
				typ = 0
			}
			if typ != 0 {
				have |= 1 << typ
			}
		}
		off = data + n
	}
	if have != haveAll {
		return h, DropMissingOption
	}
	return h, DropNone
}

// AppendHeader appends a GENEVE header carrying the three AWS options, then
// extra (further options, already encoded, a multiple of 4 bytes), to dst.
// The GWLB simulator and the tests build their packets with it.
func AppendHeader(dst []byte, protocol uint16, vni uint32, endpoint, attachment uint64, cookie uint32, extra []byte) []byte {
	optWords := (AWSGeneveHeader - genevebase + len(extra)) / 4
	dst = append(dst, byte(optWords), 0)
	dst = binary.BigEndian.AppendUint16(dst, protocol)
	dst = binary.BigEndian.AppendUint32(dst, vni<<8)
	dst = appendOption(dst, AWSOptionEndpoint, 2)
	dst = binary.BigEndian.AppendUint64(dst, endpoint)
	dst = appendOption(dst, AWSOptionAttachment, 2)
	dst = binary.BigEndian.AppendUint64(dst, attachment)
	dst = appendOption(dst, AWSOptionFlowCookie, 1)
	dst = binary.BigEndian.AppendUint32(dst, cookie)
	return append(dst, extra...)
}

func appendOption(dst []byte, typ uint8, words uint8) []byte {
	dst = binary.BigEndian.AppendUint16(dst, AWSOptionClass)
	return append(dst, typ, words)
}
