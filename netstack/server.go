// Package netstack receives the GWLB's GENEVE traffic, terminates the inner
// flows in one gVisor stack per GWLB endpoint, and sends every reply back to
// the GWLB under its flow's own GENEVE header. It hands each accepted flow to
// a Handler and knows nothing about what the handler does with it.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// Server is the GENEVE side of the appliance.
type Server struct {
	cfg Config
	// readFailing holds, for each reader, when its current run of read
	// errors began (monoclock), 0 while it reads: ReadFailingFor.
	readFailing []atomic.Int64
	// reclaimOff turns the reclaim at critical memory off: SetReclaim.
	reclaimOff atomic.Bool
	flows      *flowTable
	conns      []*net.UDPConn
	ret        returnPath
	stats      counters
	acks       ackDelayer
	// stacks maps endpoint IDs to their open stacks. A stack leaves it
	// when it is closed (idle, or the server closing), under its own lock,
	// so a reader that loaded it just before sees it closed and looks
	// again.
	stacks  sync.Map // endpoint ID -> *endpointStack
	stackMu sync.Mutex
	shut    bool // under stackMu: Close has begun, no new stacks
	nstacks atomic.Int64
	// capWarned is when the endpoint cap was last logged (monoclock.Now).
	capWarned atomic.Int64
	done      chan struct{}
	wg        sync.WaitGroup
	// badDestWarned is when a packet to a bad destination was last logged.
	badDestWarned atomic.Int64
	// live counts the accepted TCP connections per client, for reclaim
	// (reclaim.go); reclaiming is set while its loop runs.
	live       liveConns
	reclaiming atomic.Bool
	// The SYNs waiting for a stack to let go of a reset connection: at most synWaitCap (synwait.go).
	synWaiters atomic.Int32
	synWaitCap int32 // maxSynWaiters if 0
	synPoll    synPoller
}

// Listen opens the GENEVE sockets and the return path. Serve starts reading.
func Listen(cfg Config) (*Server, error) {
	if cfg.Handler == nil {
		return nil, errors.New("netstack: Config.Handler is nil")
	}
	cfg.setDefaults()
	addr, err := net.ResolveUDPAddr("udp4", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("GENEVE listen address %q: %w", cfg.ListenAddr, err)
	}
	s := &Server{
		cfg:   cfg,
		flows: newFlowTable(cfg.MaxFlows, cfg.TCPIdleTimeout, cfg.IdleTimeout),
		done:  make(chan struct{}),
	}
	s.acks.init(s, cfg.AckDelay)
	s.flows.SetTransitory(cfg.TransitoryTimeout)
	s.flows.held = s.holdsTCP
	if cfg.MaxFlowsPerClient < cfg.MaxFlows {
		s.flows.LimitPerClient(cfg.MaxFlowsPerClient)
	}
	lc := net.ListenConfig{Control: reusePort}
	for range cfg.Readers {
		pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
		if err != nil {
			s.closeConns()
			return nil, fmt.Errorf("listening for GENEVE on %s: %w", addr, err)
		}
		c := pc.(*net.UDPConn)
		_ = c.SetReadBuffer(8 << 20)
		_ = c.SetWriteBuffer(8 << 20)
		s.conns = append(s.conns, c)
		addr = c.LocalAddr().(*net.UDPAddr) // port 0 resolves once, for all readers
	}
	s.readFailing = make([]atomic.Int64, len(s.conns))
	local := addr.AddrPort().Addr().Unmap()
	if !local.IsValid() {
		local = netip.IPv4Unspecified()
	}
	s.ret, err = newReturnPath(cfg.ReturnPath, local, s.conns[0], cfg.ReplyPort, &s.stats.returnFallbacks)
	if err != nil {
		s.closeConns()
		return nil, err
	}
	slog.Info("GENEVE listening", "addr", addr, "readers", cfg.Readers, "return_path", s.ret.name(), "mtu", cfg.MTU)
	return s, nil
}

func reusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	return errors.Join(err, serr)
}

// Addr returns the GENEVE listening address.
func (s *Server) Addr() netip.AddrPort { return s.conns[0].LocalAddr().(*net.UDPAddr).AddrPort() }

// ReturnPath names the return path in use (raw or bound).
func (s *Server) ReturnPath() string { return s.ret.name() }

// Serve reads GENEVE until Close. It returns once every reader has stopped.
func (s *Server) Serve() {
	for i, c := range s.conns {
		s.wg.Add(1)
		go s.read(c, &s.readFailing[i])
	}
	s.wg.Add(1)
	go s.expireLoop()
	s.wg.Wait()
}

// Close stops the readers and the stacks.
func (s *Server) Close() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	close(s.done)
	s.closeConns()
	s.stackMu.Lock()
	s.shut = true
	s.stackMu.Unlock()
	s.stacks.Range(func(_, v any) bool {
		st := v.(*endpointStack)
		// Blocks until the packets being handed in are through; later ones
		// see the stack closed and, with no new stacks made, are dropped.
		st.mu.Lock()
		closing := !st.closed
		if closing {
			s.forgetStack(st)
		}
		st.mu.Unlock()
		if closing {
			// Replies still leave: the flows these stacks end get their
			// RSTs. No waiting for the stacks' goroutines, which end on
			// their own: with many connections it would take the drain's
			// time.
			st.close()
		}
		return true
	})
	s.acks.stop()
	return s.ret.close()
}

func (s *Server) closeConns() {
	for _, c := range s.conns {
		c.Close()
	}
}

// read takes GENEVE datagrams from c, a batch per system call, until the
// server closes.
func (s *Server) read(c *net.UDPConn, failingSince *atomic.Int64) {
	defer s.wg.Done()
	r, err := newBatchReader(c)
	if err != nil {
		slog.Error("reading GENEVE: the socket has no file descriptor", "err", err)
		return
	}
	co := newCoalescer()
	failed := 0 // consecutive read errors
	for {
		n, err := r.read()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.stats.readErrors.Add(1)
			if failed++; failed == 1 {
				failingSince.Store(monoclock.Now())
			}
			// 1, 2, 4, 8...: an error that persists is logged ever more
			// rarely, and counted on /stats every time.
			if failed&(failed-1) == 0 {
				slog.Warn("reading GENEVE", "err", err, "consecutive_errors", failed)
			}
			if !s.readBackoff(failed) {
				return
			}
			continue
		}
		if failed != 0 {
			slog.Info("reading GENEVE again", "after_errors", failed)
			failed = 0
			failingSince.Store(0)
		}
		for i := range n {
			b, from, truncated := r.datagram(i)
			if truncated {
				s.stats.packetsIn.Add(1)
				s.stats.drop(DropDatagramTooBig)
				continue
			}
			s.handleDatagram(b, from, co)
		}
		if co != nil {
			co.flush()
		}
	}
}

// handleDatagram takes one GENEVE datagram from the GWLB into the flow table
// and the endpoint's stack, its TCP segments by way of the reader's
// coalescer co (nil: straight in).
func (s *Server) handleDatagram(b []byte, from netip.AddrPort, co *coalescer) {
	s.stats.packetsIn.Add(1)
	s.stats.bytesIn.Add(uint64(len(b)))
	if s.cfg.Senders != nil && !s.allowedSender(from.Addr().Unmap()) {
		s.stats.drop(DropUnknownSender)
		return
	}
	h, reason := ParseHeader(b)
	if reason != DropNone {
		s.stats.drop(reason)
		return
	}
	inner := b[h.Len:]
	p, reason := ParsePacket(inner, h.Protocol)
	if reason == DropNone {
		// What the stack would drop never reaches the flow table or the
		// tap (clientscreen.go).
		reason = s.screenClient(&p, inner[:p.Len], h.Endpoint)
	}
	if reason != DropNone {
		s.stats.drop(reason)
		return
	}
	// A later fragment or an ICMP error makes no stack: with none, the
	// fragment's first was never taken in, and the error's flow is not
	// held.
	noStack := DropFragmentNoFlow
	if p.ICMPError {
		noStack = DropICMPErrorNoFlow
	}
	st, reason := s.enterStack(h.Endpoint, !p.Fragment && !p.ICMPError, noStack)
	if st == nil {
		if reason != DropNone {
			s.stats.drop(reason)
		}
		return
	}
	reason = s.deliver(st, b, h, &p, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), co)
	st.mu.RUnlock()
	if reason != DropNone {
		s.stats.drop(reason)
	}
}

// deliver hands a parsed packet to its endpoint's stack st, which the
// caller holds open (st.mu read-locked): every packet refreshes or creates
// its flow in the table first, so that the flow table bounds the flows the
// stacks take in (a UDP endpoint may outlive its flow's entry, bounded by
// the handler's own shares). A later fragment carries no ports: it follows the flow of
// its first fragment, or is dropped when that was not taken in.
func (s *Server) deliver(st *endpointStack, b []byte, h Header, p *Packet, gwlb netip.AddrPort, co *coalescer) DropReason {
	now := monoclock.Now()
	inner := b[h.Len:]
	var flow *Flow
	var tcpBefore uint32 // a TCP flow's state before this segment, with a tap
	if p.Fragment {
		// A flow evicted since its first fragment (flowevict.go) takes
		// no more: fragments never get past the table.
		if flow = st.inFrags.followIn(p, now); flow == nil || flow.removed.Load() {
			return DropFragmentNoFlow
		}
		flow.lastSeen.Store(now)
		if reason := s.tapScreensFragment(p, inner, flow, 0); reason != DropNone {
			return reason
		}
	} else if p.ICMPError {
		// About a flow the table holds, or about nothing: an error makes
		// no flow (a router's error would take its share from the router,
		// and a forged one would fill the table), and it neither moves the
		// flow to its own GENEVE header, which is the GWLB's for the
		// error's own 5-tuple, nor keeps the flow alive.
		key := p.Key(h.Endpoint)
		if flow = s.flows.Lookup(&key); flow == nil {
			return DropICMPErrorNoFlow
		}
		if reason := checkICMPError(p, inner, flow, now); reason != DropNone {
			return reason
		}
	} else {
		key := p.Key(h.Endpoint)
		var reason DropReason
		switch {
		case p.Proto == protoTCP && p.TCPFlags&(flagSyn|flagAck|flagRst|flagFin) == flagSyn:
			// Only a bare SYN starts a connection: a SYN-ACK, or a SYN with
			// RST or FIN, from the destination's side of a handshake is a
			// stray segment like any other.
			flow, reason = s.flows.TouchSyn(&key, b[:h.Len], h, gwlb, now)
		case p.Proto == protoTCP:
			flow, reason = s.flows.TouchSegment(&key, b[:h.Len], h, gwlb, now)
		default:
			flow, reason = s.flows.Touch(&key, b[:h.Len], h, gwlb, now)
		}
		if reason != DropNone {
			return reason
		}
		// The key has a direction, so only the flow's client's own
		// segments get here: one from the destination's side (D:dp ->
		// V:vp) is a flow of D's, and cannot move SND.UNA of V's (which
		// would have a router's Packet Too Big about data in flight
		// refused), make it transitory, or restart its window.
		if p.Proto == protoTCP {
			if s.cfg.Tap != nil {
				tcpBefore = flow.tcp.Load()
			}
			s.flows.tcpSeen(flow, flow.tcpClient(p.TCPFlags))
			if p.TCPFlags&(flagAck|flagRst|flagSyn) == flagAck {
				flow.tcpAcked(p.ack)
			} else if p.TCPFlags&flagRst != 0 && (s.cfg.Tap != nil || !sumsFail(p, inner[:p.Len])) {
				// Only a RST the stack will take ends the flow's
				// connection: without a tap nothing above checked
				// its checksums, and the stack drops one that fails
				// them, its flow live. A RST is a few words; a
				// fragmented one never gets here (stackRefuses).
				flow.clientRst.Store(now) // a SYN right after it may wait (synwait.go)
				if s.acks.delay != 0 {
					s.acks.dropHeld(flow, p.seq)
				}
			}
		}
		if p.MoreFragments { // its later fragments find no first if it is dropped
			if reason := s.tapScreensFragment(p, inner, flow, tcpBefore); reason != DropNone {
				return reason
			}
		}
		// An echo request's fragments never reach the stack: the echo
		// relay takes the first alone.
		if p.MoreFragments && !p.Echo {
			st.inFrags.remember(p, flow, now)
		}
	}
	st.sawPacket(now) // a packet of a flow: one without keeps no stack open
	if p.Echo && p.MoreFragments {
		// The relay would send the first fragment's data alone, and the
		// client get a well-formed answer to a request it never made.
		return DropEchoFragmented
	}
	if s.cfg.Tap != nil {
		// Only now, taken in: a packet dropped above never reached a
		// stack, and an IDS shown it would rebuild what no one got.
		if done, reason := s.tapIn(st, co, flow, &h, p, inner, tcpBefore); done {
			return reason
		}
	}
	if p.Echo {
		s.handleEcho(flow, p, inner)
		return DropNone
	}
	if p.Proto == protoTCP && p.TCPFlags&(flagSyn|flagAck|flagRst|flagFin) == flagSyn {
		if waits, reason := s.synWaits(st, flow, p, inner[:p.Len], now); waits {
			return reason // a reset connection on its 4-tuple is on its way out
		}
	}
	if co != nil && coalescable(p, inner) {
		// Cut to the IP length: GRO would sum the bytes after it into the
		// TCP checksum it checks, and the stack trusts what GRO checked.
		co.hold(st, inner[:p.Len], p)
		return DropNone
	}
	if co != nil && p.Proto == protoTCP {
		// Held ACKs and segments of the flow go in first, in order.
		co.flushLocked(st)
	}
	st.link.inject(inner, p.IPv6)
	return DropNone
}

func (s *Server) allowedSender(a netip.Addr) bool {
	for _, p := range s.cfg.Senders {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// batchReply adds one packet the stack emitted to the reply batch b, under
// its flow's GENEVE header; now is the time of the batch, frags the
// endpoint's fragment table. A packet without a flow is dropped and counted.
func (s *Server) batchReply(b *replyBatch, endpoint uint64, pb *stack.PacketBuffer, now int64, frags *fragTable) {
	const innerOff = outerHeadroom + MaxGeneveHeader
	buf := b.buf()
	size := pb.Size()
	if size > len(buf)-innerOff {
		s.stats.drop(DropTooBig)
		return
	}
	cur := newFlatCursor(pb)
	n := cur.read(buf[innerOff : innerOff+size])
	if dgram, gwlb, ok := s.wrapReply(endpoint, buf, innerOff, n, now, frags, true); ok {
		b.add(dgram, gwlb)
	}
}

// sendReplies sends the batch's datagrams and empties it.
func (s *Server) sendReplies(b *replyBatch) {
	if b.n == 0 {
		return
	}
	bytes := 0
	for i := range b.n {
		bytes += len(b.pkts[i]) - outerHeadroom
	}
	failed, err := s.ret.sendBatch(b)
	if err != nil {
		s.stats.drops[DropSendError].Add(uint64(failed))
		s.stats.lastSendError.Store(err.Error())
	}
	s.stats.packetsOut.Add(uint64(b.n - failed))
	s.stats.bytesOut.Add(uint64(bytes - b.failedBytes))
	b.n, b.failedBytes = 0, 0
}

// sendInner wraps the inner packet at buf[innerOff:innerOff+n], which the
// appliance made beside the stack (the echo relay's replies), in its flow's
// GENEVE header and sends it (see wrapReply), reporting whether it went out.
func (s *Server) sendInner(endpoint uint64, buf []byte, innerOff, n int, now int64, frags *fragTable) bool {
	dgram, gwlb, ok := s.wrapReply(endpoint, buf, innerOff, n, now, frags, false)
	return ok && s.sendDatagram(dgram, gwlb)
}

// sendDatagram sends one GENEVE datagram (outer headroom first) on its own
// system call, counts it, and reports whether the send succeeded.
func (s *Server) sendDatagram(dgram []byte, gwlb netip.AddrPort) bool {
	if err := s.ret.send(dgram, gwlb); err != nil {
		s.stats.drop(DropSendError)
		s.stats.lastSendError.Store(err.Error())
		return false
	}
	s.stats.packetsOut.Add(1)
	s.stats.bytesOut.Add(uint64(len(dgram) - outerHeadroom))
	return true
}

// wrapReply puts the GENEVE header of the inner packet's flow right in front
// of it, at buf[innerOff:innerOff+n], and returns the datagram (outer
// headroom first, as returnPath.send takes it) and the GWLB address it goes
// to. A packet without a flow is dropped and counted (ok false). A later
// fragment carries no ports: it takes the flow its first fragment was sent
// under, which frags (the endpoint's fragment table; nil for packets that
// are never fragmented) remembers. A pure ACK may be held instead, for a
// reply of its flow to carry (ok false, nothing counted; delayack.go).
// fromStack says the packet is one a stack wrote: ICMP echo from a stack
// is dropped and counted, as only the echo relay may answer echo.
func (s *Server) wrapReply(endpoint uint64, buf []byte, innerOff, n int, now int64, frags *fragTable, fromStack bool) (dgram []byte, gwlb netip.AddrPort, ok bool) {
	inner := buf[innerOff : innerOff+n]
	etherType := uint16(EtherTypeIPv4)
	if n > 0 && inner[0]>>4 == 6 {
		etherType = EtherTypeIPv6
	}
	p, reason := ParsePacket(inner, etherType)
	if reason != DropNone {
		s.stats.drop(reason)
		return nil, gwlb, false
	}
	if fromStack && stackEcho(&p, inner) {
		// gVisor answers ICMPv6 echo for the addresses it spoofs (its
		// IPv4 side does not); the answer would come from the
		// destination whatever the policy says of it. Echo is the
		// relay's, beside the stack (icmp.go): should a request ever
		// reach a stack, its answer stops here.
		s.stats.drop(DropStackEcho)
		return nil, gwlb, false
	}
	var flow *Flow
	switch {
	case p.Fragment:
		if frags != nil {
			flow = frags.follow(&p, now)
		}
		if flow == nil {
			s.stats.drop(DropNoFlow)
			return nil, gwlb, false
		}
	default:
		// A reply goes to its flow's client: keyed the other way round
		// from the client's packets, it finds no flow but the one its
		// destination made, and leaves under that one's header only.
		key := p.ReplyKey(endpoint)
		if flow = s.flows.Lookup(&key); flow == nil {
			s.stats.drop(DropNoFlow)
			return nil, gwlb, false
		}
		if p.MoreFragments && frags != nil {
			frags.remember(&p, flow, now)
		}
	}
	flow.lastSeen.Store(now) // the GWLB's idle timer counts both directions
	switch {
	case p.Proto == protoTCP && !p.Fragment && !p.ICMPError:
		s.flows.tcpSeen(flow, flow.tcpStack(p.TCPFlags))
		flow.tcpSent(&p, inner)
	case p.Proto != protoTCP && !p.ICMPError && !flow.replied.Load():
		flow.replied.Store(true)
		s.flows.answered(flow)
	}
	tn := flow.tunnel.Load()
	start := innerOff - len(tn.header)
	copy(buf[start:], tn.header)
	dgram = buf[start-outerHeadroom : innerOff+n]
	if s.acks.delay > 0 && p.Proto == protoTCP && !p.ICMPError && !p.Fragment &&
		!s.acks.outbound(flow, inner, &p, dgram, innerOff-(start-outerHeadroom), tn.gwlb, now) {
		return nil, gwlb, false // held for a reply to carry; tapped if it leaves
	}
	if s.cfg.Tap != nil {
		s.cfg.Tap.Packet(endpoint, tn.parsed.FlowCookie, true, time.Now().UnixNano(), p, inner)
	}
	return dgram, tn.gwlb, true
}

// stackEcho reports whether the inner packet pkt, as ParsePacket read it
// into p, is an ICMP or ICMPv6 echo request or reply (its first fragment,
// if fragmented: the later ones then find no flow).
func stackEcho(p *Packet, pkt []byte) bool {
	return (p.Proto == protoICMP || p.Proto == protoICMPv6) && !p.Fragment && !p.ICMPError &&
		isEcho(pkt[p.Payload], p.IPv6)
}

func (s *Server) expireLoop() {
	defer s.wg.Done()
	every := min(s.cfg.IdleTimeout, s.cfg.TransitoryTimeout, s.cfg.EndpointIdleTimeout) / 10
	t := time.NewTicker(max(every, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.expireIdle()
		}
	}
}

// expireIdle is one round of expireLoop: the flows idle past their
// timeouts, then the stacks of endpoints left with neither flows nor
// packets, by monoclock.Now (a wall-clock step forward would expire every flow
// at once and abort its connections).
func (s *Server) expireIdle() {
	now := monoclock.Now()
	s.flows.Expire(now)
	s.closeIdleStacks(now)
}

// flowInfo describes the flow with key k as seen by a stack: the client is
// the remote end, the destination the stack's local end.
func (s *Server) flowInfo(endpoint uint64, client, dest netip.AddrPort, key *FlowKey) FlowInfo {
	fi := FlowInfo{Endpoint: endpoint, Client: client, Dest: dest}
	if f := s.flows.Lookup(key); f != nil {
		h := f.Header()
		fi.Attachment, fi.FlowCookie = h.Attachment, h.FlowCookie
	}
	return fi
}
