package gwlbsim

import (
	"bytes"
	"log/slog"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// ReplyHeadroom is how many bytes in front of a reply's GENEVE header are
// free in the buffers replies are read into: a batch receiver may write
// there (a TUN device's virtio-net header, say).
const ReplyHeadroom = 16

// maxGWLBDatagram is the largest GENEVE datagram the GWLB carries, its
// outer IPv4 and UDP headers (outerIPv4UDP bytes) included.
const (
	maxGWLBDatagram = 8500
	outerIPv4UDP    = 20 + 8
)

// replyBatch is how many datagrams one recvmmsg reads at most.
const replyBatch = 32

// replyBufSize is each reply buffer's size: the headroom, then room for
// the largest datagram; a receiver may grow a packet into the rest (a TUN
// device coalescing segments into one of 64 KiB).
const replyBufSize = ReplyHeadroom + netstack.MaxGeneveHeader + 65536

// batchReceiver is what SetBatchReceiver installs.
type batchReceiver struct {
	reply func(pkt []byte, off int)
	flush func()
}

// SetBatchReceiver makes replies for this endpoint's clients go to reply,
// a batch at a time: reply is called for each accepted reply of a batch
// the simulator read at once, then flush once. In reply, pkt[off:] is the
// inner packet; the off bytes before it (at least ReplyHeadroom) and pkt's
// capacity beyond it are the receiver's to use; pkt stays valid until
// flush returns. Both run on the simulator's reader goroutine. It replaces
// a receiver set by SetReceiver.
func (e *Endpoint) SetBatchReceiver(reply func(pkt []byte, off int), flush func()) {
	e.batch.Store(&batchReceiver{reply: reply, flush: flush})
}

// readReplies reads replies a batch at a time (recvmmsg) until the
// simulator closes; each is checked (handleReply), and every batch
// receiver that got one is flushed once the batch is done.
func (s *Sim) readReplies() {
	defer s.wg.Done()
	raw, err := s.listen.SyscallConn()
	if err != nil {
		slog.Warn("gwlbsim: the reply socket's raw connection", "err", err)
		return
	}
	b := newRecvBatch(replyBatch, replyBufSize, ReplyHeadroom)
	touched := make([]*Endpoint, 0, 4)
	for {
		n, err := b.recv(raw)
		if err != nil {
			if !s.closed.Load() {
				slog.Warn("gwlbsim: reading replies", "err", err)
			}
			return
		}
		for i := range n {
			dgram, from, ok := b.message(i)
			if !ok {
				s.malformed.Add(1) // truncated: larger than any GENEVE datagram
				continue
			}
			e := s.handleReply(b.bufs[i][:ReplyHeadroom+len(dgram)], ReplyHeadroom, from)
			if e != nil && !containsEndpoint(touched, e) {
				touched = append(touched, e)
			}
		}
		for _, e := range touched {
			if br := e.batch.Load(); br != nil {
				br.flush()
			}
		}
		clear(touched)
		touched = touched[:0]
	}
}

func containsEndpoint(es []*Endpoint, e *Endpoint) bool {
	for _, x := range es {
		if x == e {
			return true
		}
	}
	return false
}

// handleReply checks one reply, buf[off:], from the address and port
// from, and delivers its inner packet to its endpoint's receiver. It
// returns the endpoint when it handed the packet to a batch receiver,
// which then needs a flush.
//
// A reply must fit in the GWLB's 8500 bytes, outer headers included, and
// come from its flow's target, from the source port the simulator sends
// that flow from (replies keep the outer ports), under the flow's current
// header byte for byte, and go to an end of the flow that has sent through
// the simulator: a GWLB carries a packet on toward its inner destination,
// so a "reply" to the end that never sent (client to destination, as the
// client's address) would leave as the client's traffic, around the
// appliance's SNAT. A later IP fragment carries no
// ports: it is held to the flow of its datagram's first fragment, or, when
// that was not seen, to the flow of its endpoint between its addresses
// whose cookie its header names (replyfrags.go).
func (s *Sim) handleReply(buf []byte, off int, from netip.AddrPort) *Endpoint {
	b := buf[off:]
	if len(b)+outerIPv4UDP > maxGWLBDatagram {
		// The GWLB would not carry it; accepting it would hide an
		// appliance that breaks its own bound on reply sizes.
		s.tooBig.Add(1)
		return nil
	}
	h, reason := netstack.ParseHeader(b)
	if reason != netstack.DropNone {
		s.malformed.Add(1)
		return nil
	}
	inner := b[h.Len:]
	p, reason := netstack.ParsePacket(inner, h.Protocol)
	if reason != netstack.DropNone {
		s.malformed.Add(1)
		return nil
	}
	now := time.Now().UnixNano()
	s.mu.RLock()
	e := s.endpoints[h.Endpoint]
	var f *simFlow
	switch {
	case e == nil:
	case !p.Fragment:
		f = s.flows[s.flowKey(p.Tuple(h.Endpoint))]
	default:
		if f = s.replyFrags.follow(h.Endpoint, &p, now); f != nil && s.flows[f.key] != f {
			f = nil // forgotten since its first fragment
		}
		if f == nil {
			f = s.fragmentFlowLocked(e, &p, h.FlowCookie)
		}
	}
	s.mu.RUnlock()
	if e == nil {
		s.unknownEP.Add(1)
		return nil
	}
	if f == nil {
		s.unknown.Add(1)
		return nil
	}
	r := f.route.Load()
	switch {
	case r.target == nil || r.target.addr.Addr() != from.Addr():
		s.wrongTarget.Add(1)
		return nil
	case from.Port() != f.port && !s.portsShared(r.target, from.Port()):
		s.wrongSrcPort.Add(1)
		return nil
	case !bytes.Equal(r.header, b[:h.Len]):
		s.mismatch.Add(1)
		return nil
	case !f.answers(p.DstAddr()):
		s.wrongDir.Add(1)
		return nil
	}
	f.last.Store(now)
	r.target.replies.Add(1)
	if !p.Fragment && p.MoreFragments {
		s.replyFrags.remember(h.Endpoint, &p, f, now)
	}
	if br := e.batch.Load(); br != nil {
		s.received.Add(1)
		br.reply(buf, off+h.Len)
		return e
	}
	if fn := e.deliver.Load(); fn != nil {
		s.received.Add(1)
		(*fn)(inner)
	}
	return nil
}

// portsShared reports whether a reply from target t and port is to be
// accepted although the flow is sent from another port: t shares the
// simulator's address (a test rig with both on 127.0.0.1, say), so the
// simulator's own sockets hold the ports its flows are sent from and the
// appliance cannot bind them; its bound return path then falls back to its
// GENEVE listener's port, and that port is accepted too. Nowhere else.
func (s *Sim) portsShared(t *target, port uint16) bool {
	return port == t.addr.Port() && (t.addr.Addr() == s.cfg.Addr || s.cfg.Addr.IsUnspecified())
}

// fromSockaddr is the IPv4 address and port of a received datagram's
// sender.
func fromSockaddr(sa *unix.RawSockaddrInet4) netip.AddrPort {
	p := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
}

// answers reports whether a reply to dst goes to an end of f that has sent
// through the simulator.
func (f *simFlow) answers(dst netip.Addr) bool {
	return dst == f.src.Addr() || dst == f.dst.Addr() && f.fromDst.Load()
}
