package gwlbsim

import (
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// A client stack is gVisor's TCP, which acknowledges every segment it
// takes in at once. The clients an appliance serves are mostly kernels,
// which delay their ACKs (RFC 9293, 3.8.6.3): Linux acknowledges the first
// segments of a connection at once (quick ACKs), then, when more than one
// full-sized segment is unacknowledged, at once, and otherwise holds the
// ACK for up to its delayed-ACK time, long enough for a request that
// follows a response to carry it. So a kept-alive request costs an
// appliance serving a kernel one datagram in, where a gVisor client costs
// it two. ackDelayer makes a client stack acknowledge as Linux does, by
// those rules, and sends at once the ACKs Linux never delays (duplicates,
// SACK, window updates, after data out of order), for tests that measure
// the appliance against what such clients send.
type ackDelayer struct {
	send func([]byte) error

	// mu is held across sends too, so that a held ACK sent by its timer
	// and a later segment of its flow leave in the order they were made.
	mu    sync.Mutex
	flows map[ackFlowKey]*ackFlow
	gen   uint64 // counts holds, across flows: a stale timer does nothing
}

const (
	// quickACKs is how many data segments of a connection are
	// acknowledged at once (Linux's TCP_MAX_QUICKACKS). Linux stops
	// sooner once the connection answers quickly (its ping-pong mode),
	// so this sends more ACKs than Linux would, never fewer.
	quickACKs = 16
	// ackDelay is how long an ACK may be held (Linux's TCP_DELACK_MIN).
	ackDelay = 40 * time.Millisecond
)

// ackFlowKey is a TCP connection as the client sends it.
type ackFlowKey struct{ src, dst netip.AddrPort }

// ackFlow is what the delayer knows of one connection, which it learns
// from the data that comes to the client.
type ackFlow struct {
	segs     int    // data segments received
	mss      int    // the largest of them
	rcvNxt   uint32 // the sequence number after the last one
	ackNow   bool   // one came out of order: the next ACK goes at once
	lastAck  uint32 // acknowledgement number of the last segment sent
	lastWnd  uint16 // and its window
	held     []byte // a pure ACK held, empty if none
	heldGen  uint64 // the hold its timer was set for
	timerSet bool   // a timer is pending for heldGen
}

func newAckDelayer(send func([]byte) error) *ackDelayer {
	return &ackDelayer{send: send, flows: map[ackFlowKey]*ackFlow{}}
}

// tcpOf parses pkt (IPv4 or IPv6, no extension headers) as a TCP segment:
// its addresses, TCP header and payload length; ok false if it is not one.
func tcpOf(pkt []byte) (src, dst netip.AddrPort, tcp header.TCP, payload int, ok bool) {
	var srcIP, dstIP netip.Addr
	var body []byte
	switch {
	case len(pkt) >= header.IPv4MinimumSize && pkt[0]>>4 == 4:
		ip := header.IPv4(pkt)
		hl, tl := int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || hl < header.IPv4MinimumSize || tl < hl || tl > len(pkt) || ip.FragmentOffset() != 0 || ip.More() {
			return
		}
		srcIP, dstIP, body = netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4()), pkt[hl:tl]
	case len(pkt) >= header.IPv6MinimumSize && pkt[0]>>4 == 6:
		ip := header.IPv6(pkt)
		pl := int(ip.PayloadLength())
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) || header.IPv6MinimumSize+pl > len(pkt) {
			return
		}
		srcIP, dstIP, body = netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16()), pkt[header.IPv6MinimumSize:header.IPv6MinimumSize+pl]
	default:
		return
	}
	if len(body) < header.TCPMinimumSize {
		return
	}
	tcp = header.TCP(body)
	off := int(tcp.DataOffset())
	if off < header.TCPMinimumSize || off > len(body) {
		return
	}
	return netip.AddrPortFrom(srcIP, tcp.SourcePort()), netip.AddrPortFrom(dstIP, tcp.DestinationPort()), tcp, len(body) - off, true
}

// received notes a segment coming to the client. Only data makes a
// record: a connection's segments before its first data go at once.
func (d *ackDelayer) received(pkt []byte) {
	src, dst, tcp, n, ok := tcpOf(pkt)
	if !ok || n == 0 {
		return
	}
	d.mu.Lock()
	k := ackFlowKey{src: dst, dst: src}
	f := d.flows[k]
	if f == nil {
		f = &ackFlow{}
		d.flows[k] = f
	} else if tcp.SequenceNumber() != f.rcvNxt {
		f.ackNow = true // out of order, or again: Linux acknowledges at once
	}
	f.segs++
	f.mss = max(f.mss, n)
	f.rcvNxt = tcp.SequenceNumber() + uint32(n)
	d.mu.Unlock()
}

// write sends pkt, a segment the client's stack sends, or holds it if it
// is an ACK Linux would delay: a pure ACK that moves the acknowledgement
// forward by at most one full segment, past the quick ACKs, after data
// that came in order, without SACK blocks and without opening the window.
// A segment of the flow sent meanwhile carries the held ACK's news (its
// acknowledgement number is as high), so the held one is dropped; a newer
// pure ACK takes its place, with the same deadline; else it goes ackDelay
// after it was first held.
func (d *ackDelayer) write(pkt []byte) error {
	src, dst, tcp, n, ok := tcpOf(pkt)
	if !ok {
		return d.send(pkt)
	}
	k := ackFlowKey{src: src, dst: dst}
	flags := tcp.Flags()
	ack, wnd := tcp.AckNumber(), tcp.WindowSize()
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.flows[k]
	if f == nil {
		return d.send(pkt)
	}
	if n == 0 && flags == header.TCPFlagAck && f.segs > quickACKs && !f.ackNow &&
		ack != f.lastAck && ack-f.lastAck <= uint32(f.mss) && wnd <= f.lastWnd &&
		len(header.ParseTCPOptions(tcp.Options()).SACKBlocks) == 0 {
		f.held = append(f.held[:0], pkt...)
		if !f.timerSet {
			d.gen++
			f.heldGen, f.timerSet = d.gen, true
			gen := d.gen
			time.AfterFunc(ackDelay, func() { d.expire(k, gen) })
		}
		return nil
	}
	f.held, f.timerSet, f.ackNow = f.held[:0], false, false
	if flags&header.TCPFlagAck != 0 {
		f.lastAck, f.lastWnd = ack, wnd
	}
	if flags&(header.TCPFlagFin|header.TCPFlagRst) != 0 {
		delete(d.flows, k) // what follows goes at once
	}
	return d.send(pkt)
}

// expire sends the ACK held under hold gen, if one still is.
func (d *ackDelayer) expire(k ackFlowKey, gen uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.flows[k]
	if f == nil || f.heldGen != gen || !f.timerSet {
		return
	}
	f.timerSet = false
	if len(f.held) == 0 {
		return
	}
	pkt := f.held
	f.held = nil
	_, _, tcp, _, _ := tcpOf(pkt)
	f.lastAck, f.lastWnd = tcp.AckNumber(), tcp.WindowSize()
	_ = d.send(pkt)
}
