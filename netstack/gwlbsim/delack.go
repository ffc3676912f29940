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
// those three rules, for tests that measure the appliance against what
// such clients send.
type ackDelayer struct {
	send func([]byte) error

	mu    sync.Mutex
	flows map[ackFlowKey]*ackFlow
}

const (
	// quickACKs is how many data segments of a connection are
	// acknowledged at once (Linux's TCP_MAX_QUICKACKS).
	quickACKs = 16
	// ackDelay is how long an ACK may be held (Linux's TCP_DELACK_MIN).
	ackDelay = 40 * time.Millisecond
)

// ackFlowKey is a TCP connection as the client sends it.
type ackFlowKey struct{ src, dst netip.AddrPort }

// ackFlow is what the delayer knows of one connection.
type ackFlow struct {
	segs    int    // data segments received
	mss     int    // the largest of them
	lastAck uint32 // acknowledgement number of the last segment sent
	held    []byte // a pure ACK held, nil if none
	gen     uint64 // counts holds: a timer of an earlier one does nothing
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

// received notes a segment coming to the client.
func (d *ackDelayer) received(pkt []byte) {
	src, dst, _, n, ok := tcpOf(pkt)
	if !ok || n == 0 {
		return
	}
	d.mu.Lock()
	f := d.flow(ackFlowKey{src: dst, dst: src})
	f.segs++
	f.mss = max(f.mss, n)
	d.mu.Unlock()
}

func (d *ackDelayer) flow(k ackFlowKey) *ackFlow {
	f := d.flows[k]
	if f == nil {
		f = &ackFlow{}
		d.flows[k] = f
	}
	return f
}

// write sends pkt, a segment the client's stack sends, or holds it if it
// is an ACK Linux would delay. A segment of the flow sent meanwhile
// carries the held ACK's news (its acknowledgement number is as high), so
// the held one is dropped; else it goes after ackDelay.
func (d *ackDelayer) write(pkt []byte) error {
	src, dst, tcp, n, ok := tcpOf(pkt)
	if !ok {
		return d.send(pkt)
	}
	k := ackFlowKey{src: src, dst: dst}
	flags := tcp.Flags()
	d.mu.Lock()
	f := d.flow(k)
	ack := tcp.AckNumber()
	if n == 0 && flags == header.TCPFlagAck && f.segs > quickACKs && ack-f.lastAck <= uint32(f.mss) {
		f.held = append(f.held[:0], pkt...)
		f.gen++
		gen := f.gen
		d.mu.Unlock()
		time.AfterFunc(ackDelay, func() { d.expire(k, gen) })
		return nil
	}
	f.held = f.held[:0]
	f.gen++
	if flags&header.TCPFlagAck != 0 {
		f.lastAck = ack
	}
	if flags&(header.TCPFlagFin|header.TCPFlagRst) != 0 {
		delete(d.flows, k) // a segment after it starts a new record, in quick mode
	}
	d.mu.Unlock()
	return d.send(pkt)
}

// expire sends the ACK held as hold gen, if it still is.
func (d *ackDelayer) expire(k ackFlowKey, gen uint64) {
	d.mu.Lock()
	f := d.flows[k]
	if f == nil || f.gen != gen || len(f.held) == 0 {
		d.mu.Unlock()
		return
	}
	pkt := append([]byte(nil), f.held...)
	f.held = f.held[:0]
	_, _, tcp, _, _ := tcpOf(pkt)
	f.lastAck = tcp.AckNumber()
	d.mu.Unlock()
	_ = d.send(pkt)
}
