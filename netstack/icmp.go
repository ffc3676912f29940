package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// EchoRequest is an ICMP or ICMPv6 echo request from a client. Only the
// real destination's answer may reach the client, so echo requests bypass
// the stack and go to the handler, which relays them. A stack must never
// answer one itself, and gVisor would: in promiscuous mode its IPv4 side
// leaves echo to the addresses it spoofs unanswered, but its IPv6 side
// answers them. So no echo request reaches a stack (ParsePacket drops what
// gVisor would read otherwise than it does), and the reply path drops any
// echo a stack writes all the same (wrapReply's fromStack).
type EchoRequest struct {
	Flow FlowInfo // ports are zero
	ID   uint16
	Seq  uint16
	Data []byte // the echo payload (a copy the handler owns)

	srv      *Server
	endpoint uint64
}

// IPv6 reports whether the request is ICMPv6.
func (r *EchoRequest) IPv6() bool { return r.Flow.Dest.Addr().Is6() }

// Reply sends the client an echo reply from the destination carrying data,
// as the destination answered. It reports why the reply did not go out, if
// it did not (the drop counted in the server's stats), so that the relay
// counts only the replies the client may have got.
func (r *EchoRequest) Reply(data []byte) error {
	bufp := replyBufPool.Get().(*[]byte)
	defer replyBufPool.Put(bufp)
	buf := *bufp
	const innerOff = outerHeadroom + MaxGeneveHeader
	v6 := r.IPv6()
	ipLen := 20
	if v6 {
		ipLen = 40
	}
	n := ipLen + 8 + len(data)
	if innerOff+n > len(buf) || n > r.srv.cfg.MTU {
		r.srv.stats.drop(DropTooBig)
		return fmt.Errorf("a reply of %d bytes is larger than the inner MTU (%d)", n, r.srv.cfg.MTU)
	}
	pkt := buf[innerOff : innerOff+n]
	src, dst := r.Flow.Dest.Addr(), r.Flow.Client.Addr()
	icmp := pkt[ipLen:]
	copy(icmp[8:], data)
	binary.BigEndian.PutUint16(icmp[4:], r.ID)
	binary.BigEndian.PutUint16(icmp[6:], r.Seq)
	icmp[1], icmp[2], icmp[3] = 0, 0, 0
	if v6 {
		pkt[0], pkt[1], pkt[2], pkt[3] = 0x60, 0, 0, 0
		binary.BigEndian.PutUint16(pkt[4:], uint16(len(icmp)))
		pkt[6], pkt[7] = protoICMPv6, 64
		s16, d16 := src.As16(), dst.As16()
		copy(pkt[8:24], s16[:])
		copy(pkt[24:40], d16[:])
		icmp[0] = 129
		var tail [8]byte
		binary.BigEndian.PutUint32(tail[:4], uint32(len(icmp)))
		tail[7] = protoICMPv6
		sum := checksum.Checksum(pkt[8:40], 0)
		sum = checksum.Checksum(tail[:], sum)
		binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, sum))
	} else {
		pkt[0], pkt[1] = 0x45, 0
		binary.BigEndian.PutUint16(pkt[2:], uint16(n))
		binary.BigEndian.PutUint32(pkt[4:], 0)
		pkt[8], pkt[9], pkt[10], pkt[11] = 64, protoICMP, 0, 0
		s4, d4 := src.As4(), dst.As4()
		copy(pkt[12:16], s4[:])
		copy(pkt[16:20], d4[:])
		binary.BigEndian.PutUint16(pkt[10:], ^checksum.Checksum(pkt[:20], 0))
		icmp[0] = 0
		binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, 0))
	}
	// At most the MTU and unfragmented: no fragment table.
	if !r.srv.sendInner(r.endpoint, buf, innerOff, n, monoclock.Now(), nil) {
		return ErrEchoNotSent
	}
	return nil
}

// ErrEchoNotSent says an echo reply that fit the MTU was dropped on its way
// to the client: the packet stack had no flow for it (it forgot an
// unanswered one) or the send to the GWLB failed. The drop's reason is in
// the server's stats.
var ErrEchoNotSent = errors.New("the packet stack could not send it (no flow for it, or the send failed: see the drops in /stats)")

// DropUnavailable counts an echo request the handler could not relay
// because the host allows no ICMP sockets.
func (r *EchoRequest) DropUnavailable() { r.srv.stats.drop(DropICMPUnavailable) }

func (s *Server) handleEcho(flow *Flow, p *Packet, inner []byte) {
	icmp := inner[p.Payload:p.Len]
	h := flow.Header()
	req := EchoRequest{
		Flow: FlowInfo{
			Endpoint: h.Endpoint, Attachment: h.Attachment, FlowCookie: h.FlowCookie,
			Client: netip.AddrPortFrom(p.SrcAddr(), 0),
			Dest:   netip.AddrPortFrom(p.DstAddr(), 0),
		},
		ID:       binary.BigEndian.Uint16(icmp[4:6]),
		Seq:      binary.BigEndian.Uint16(icmp[6:8]),
		Data:     append([]byte(nil), icmp[8:]...),
		srv:      s,
		endpoint: h.Endpoint,
	}
	s.stats.echoRequests.Add(1)
	s.cfg.Handler.HandleEcho(req)
}
