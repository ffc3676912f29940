package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff/quic"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// datagramBufPool holds buffers for the largest UDP datagram, for the UDP
// and QUIC relays.
var datagramBufPool = sync.Pool{New: func() any {
	b := make([]byte, 64<<10)
	return &b
}}

// A UDP flow is decided on its first datagram: one that starts a QUIC
// connection is held until its ClientHello can be read and decided on by
// name (quic.go); any other is decided at once as udp. An allowed flow gets
// one connected host socket (the SNAT side) and is relayed both ways until
// it idles, or, for DNS, shortly after its last answer, or a reload denies
// it (it is decided again on its next datagram after one: udpreload.go).
//
// What an idle flow holds is kept small, because there can be 100,000 of
// them: the client's side (netstack.UDPConn) announces datagrams through a
// callback, which relays them on the stack's packet path, so no goroutine
// waits there; the host side is waited on by the flow's one goroutine,
// parked in the socket's RawConn.Read; and a 64 KiB buffer is taken from a
// pool only while a datagram is in hand. A client conn without the
// callback (not from netstack) gets a reader goroutine instead.

// readableConn is what netstack.UDPConn offers besides net.Conn.
type readableConn interface {
	// TryRead reads a waiting datagram without blocking; it returns
	// netstack.ErrWouldBlock when none waits.
	TryRead(b []byte) (int, error)
	// OnReadable has fn called on the packet path when a datagram arrives
	// to an empty queue, or the conn closes; nil stops the calls.
	OnReadable(fn func())
}

// udpFlow is one UDP flow, from its first datagram to its record.
type udpFlow struct {
	p      *Proxy
	info   netstack.FlowInfo
	client net.Conn
	ready  readableConn // nil: the client is read by a goroutine of its own
	rec    *records.Record
	vouch  destVouch // what its destination check passed on
	start  time.Time
	pol    *policy.Policy
	share  shareKey // the client's, while the flow counts against its share
	shared bool

	up    *net.UDPConn
	upRaw syscall.RawConn
	// readHost and writeHost as func values, made once: handing a method
	// value to RawConn per datagram would allocate it each time.
	readFn, writeFn func(fd uintptr) bool
	wbuf            []byte // the datagram writeHost sends
	werr            error  // and what sending it gave
	hostErr         error  // a read error of the host socket (the host loop's own)
	clientGone      error  // a write to the client's side failed (the host loop's own)
	hostDecide      bool   // a datagram waits under a policy loaded since (the host loop's own)
	// hostPol is the policy the host loop last saw the flow decided
	// under (its own: f.pol is outMu's): see hostReloaded.
	hostPol *policy.Policy

	last     atomic.Int64 // when a datagram last passed either way (monoclock.Now)
	bytesOut int64        // under outMu
	bytesIn  int64        // the host loop's own
	dns      *dnsLog      // for a flow to a DNS port
	// sentOut counts the client's datagrams sent on (under outMu), and
	// openedOut is sentOut once relay has sent those the flow was opened
	// with (its first, or those its QUIC gate held): a flow that sent no
	// more cost its client only those (unreached). Datagrams, not bytes:
	// an empty one is sent too.
	sentOut, openedOut int
	// quic is the Assembler that read a QUIC flow's ClientHello: later
	// client datagrams are relayed only if they belong to that connection.
	// guardInitials is set on a flow decided as plain UDP whose policy
	// looks at names: a QUIC Initial there would start a connection nobody
	// decided on. Both are read under outMu.
	quic          *quic.Assembler
	guardInitials bool
	// quicUnread is set on a flow relayed as udp that carries a QUIC
	// connection whose ClientHello was not read: one that began as QUIC
	// but could not be read, or a udp flow that carried an Initial while
	// the policy did not look at names (see smuggled). A reload to a
	// policy that looks at names denies it, as the gate would have
	// (udpreload.go).
	quicUnread bool
	// mayBe is every connection a flow followed as a new QUIC path may be
	// (quicfollow.go): a reload decides each, not only the one it is
	// recorded as.
	mayBe []udpSubject

	// outMu lets one drain of the client's datagrams run at a time: the
	// stack may announce datagrams from several goroutines at once.
	outMu      sync.Mutex
	outPending atomic.Bool
	done       atomic.Bool   // set once the flow is ending: nothing more is relayed
	readerDone chan struct{} // the client reader goroutine ended (without readableConn)
	// wakeMu orders stopHost's wake-up of the host loop with the host
	// loop's own deadlines: one set after the wake-up would put it off.
	wakeMu sync.Mutex

	endOnce sync.Once
	endErr  error // what ended the flow, if it failed (set in endOnce)
	// endHow is what else ended it, and clientWhy, for endClient, the
	// client side's error (set in endOnce): udpend.go.
	endHow    udpEnd
	clientWhy error
	// deniedBy is the policy, loaded by a reload, that ended the flow, and
	// deniedWhy why (set in endOnce): see reloaded.
	deniedBy  *policy.Policy
	deniedWhy string
}

// HandleUDP implements netstack.Handler.
func (p *Proxy) HandleUDP(flow netstack.FlowInfo, client net.Conn) {
	f := &udpFlow{p: p, info: flow, client: client, start: time.Now(), rec: newRecord("udp", flow)}
	f.ready, _ = client.(readableConn)
	f.serve()
}

func (f *udpFlow) serve() {
	p := f.p
	reason := p.forbidden(f.info.Dest.Addr())
	if reason == "" {
		reason = p.forbiddenSenderPort(true, f.info.Dest)
	}
	if reason != "" {
		f.refuse(reason)
		return
	}
	// The flow counts against its client's share from here on, and not
	// only once it has a host socket: a flow held at the QUIC gate holds
	// its datagrams, and the share bounds how many one client can hold.
	f.share = clientShareKey(f.info)
	ok, record := p.udp.shares.acquire(f.share, p.udpShareLimit(), time.Now())
	if !ok {
		// Dropped, not held like a denied flow: the client's next
		// datagram is decided afresh, and gets through once the client
		// holds fewer flows.
		p.udp.shareDrops.Add(1)
		f.client.Close()
		if record != "" {
			f.rec.Rule, f.rec.Action, f.rec.Result, f.rec.Error = "", policy.Deny.String(), "denied", record
			f.rec.Policy = "" // the client's share refused it, not the policy
			p.finish(f.rec, f.start)
		}
		return
	}
	f.shared = true
	f.pol = p.cfg.Policy.Load()
	bufp := datagramBufPool.Get().(*[]byte)
	n, err := f.readFirst(*bufp)
	if err != nil {
		datagramBufPool.Put(bufp)
		f.releaseShare()
		f.client.Close()
		f.rec.Result, f.rec.Error = records.DialResult(err), "no datagram from the client: "+err.Error()
		p.finish(f.rec, f.start)
		return
	}
	first := (*bufp)[:n]
	if quic.IsInitial(first) {
		f.serveQUIC(first, bufp)
		return
	}
	if f.followQUIC(first, bufp) { // a QUIC connection's new path (quicpaths.go)
		return
	}
	if d := f.decide(policy.ProtoUDP, ""); d.Action == policy.Deny {
		datagramBufPool.Put(bufp)
		f.refuse("denied by policy")
		return
	}
	f.guardInitials = f.pol.NamesMatter()
	f.relay([][]byte{first}, bufp)
}

// readFirst reads the datagram the flow began with. The stack hands the
// flow over with it queued, so this does not wait, unless it was lost.
func (f *udpFlow) readFirst(b []byte) (int, error) {
	_ = f.client.SetReadDeadline(f.start.Add(f.p.cfg.UDPIdleTimeout))
	n, err := f.client.Read(b)
	_ = f.client.SetReadDeadline(time.Time{})
	return n, err
}

// decide runs the policy for the flow as classified.
func (f *udpFlow) decide(protocol, domain string) policy.Decision {
	d := f.pol.Decide(policy.Subject{
		Protocol: protocol, Domain: domain, Dest: f.info.Dest, Client: f.info.Client.Addr(), Endpoint: f.rec.Endpoint,
	})
	f.rec.Rule, f.rec.Action, f.rec.Policy = d.Rule, d.Action.String(), d.Policy
	return d
}

// refuse records a denied flow and drops it without a host socket.
func (f *udpFlow) refuse(reason string) {
	f.releaseShare() // no host socket: it does not count
	f.p.denyEarly(f.rec, f.start, clientShareKey(f.info), reason)
	f.hold(f.pol)
}

func (f *udpFlow) releaseShare() {
	if f.shared {
		f.p.udp.shares.release(f.share)
		f.shared = false
	}
}

// relay opens the host socket, sends the datagrams held so far in order,
// and relays the flow until it ends. heldBuf, if set, is the pooled buffer
// held points into, given back once they are sent.
func (f *udpFlow) relay(held [][]byte, heldBuf *[]byte) {
	p := f.p
	defer func() {
		if heldBuf != nil {
			datagramBufPool.Put(heldBuf)
		}
	}()
	up, err := dialHostUDP("udp", nil, net.UDPAddrFromAddrPort(f.info.Dest))
	if err == nil {
		f.upRaw, err = up.SyscallConn()
		if err != nil {
			up.Close()
		}
	}
	if err != nil {
		f.releaseShare()
		f.client.Close()
		p.stats.udpDialErrors.Add(1)
		f.rec.Result, f.rec.Error = records.DialResult(err), err.Error()
		// Nothing was sent: the client's datagrams bought this record,
		// which comes from its bucket (denylimit.go) when they were
		// small, as for a flow its destination refused.
		if heldBytes(held) <= dialErrorBucketBytes {
			p.finishDialError(f.rec, f.start, f.share)
		} else {
			p.finish(f.rec, f.start)
		}
		return
	}
	f.up = up
	f.readFn, f.writeFn = f.readHost, f.writeHost
	f.hostPol = f.pol
	// Read as DNS only what the policy let out as UDP to a DNS port: a
	// flow let out as QUIC by its ClientHello's name (or as a new path of
	// such a flow) carries whatever reads as a short header (a DNS query
	// with an ID below 0x8000 does), and its server's answers would vouch
	// for any name.
	if f.rec.Kind == "udp" && p.isDNSPort(f.info.Dest.Port()) {
		f.dns = newDNSLog(p, f.rec, f.pol)
	} else if f.rec.Kind == "quic" || f.quicUnread {
		p.udp.quicPaths.opened(f)
	}
	p.stats.udpActive.Add(1)

	f.touch()
	f.outMu.Lock()
	for _, d := range held {
		if !f.fromClient(d) {
			break
		}
	}
	f.openedOut = f.sentOut
	f.outMu.Unlock()
	if heldBuf != nil {
		datagramBufPool.Put(heldBuf)
		heldBuf = nil
	}
	if f.ready != nil {
		f.ready.OnReadable(f.clientReadable)
		f.clientReadable() // what came before there was anyone to announce it to
	} else {
		f.readerDone = make(chan struct{})
		go f.readClient()
	}
	// The flow's one goroutine from here on is a new one: this one's
	// stack grew deciding the flow and opening the socket, and a parked
	// goroutine keeps its stack as large as it ever was until the
	// collector finds it mostly unused. A fresh one needs only the
	// frames of the wait.
	go func() {
		f.serveHost()
		f.finish()
		f.releaseShare()
		p.stats.udpActive.Add(-1)
	}()
}

func (f *udpFlow) touch() { f.last.Store(monoclock.Now()) }

// clientReadable drains the client's datagrams to the host socket. It runs
// on the packet path, from every goroutine that announces a datagram: the
// first to take outMu drains, and one that finds it taken leaves a note
// for the drainer to go round once more. A note is left before trying, so
// no datagram is stranded: the stack announces only datagrams that arrive
// to an empty queue.
func (f *udpFlow) clientReadable() {
	f.outPending.Store(true)
	for f.outPending.Load() && f.outMu.TryLock() {
		f.outPending.Store(false)
		f.drainClient()
		f.outMu.Unlock()
	}
}

// drainClient relays every waiting datagram. Under outMu.
func (f *udpFlow) drainClient() {
	if f.done.Load() {
		return
	}
	bufp := datagramBufPool.Get().(*[]byte)
	defer datagramBufPool.Put(bufp)
	for {
		n, err := f.ready.TryRead(*bufp)
		if err == netstack.ErrWouldBlock {
			return
		}
		if err != nil {
			f.endByClient(err)
			return
		}
		if !f.fromClient((*bufp)[:n]) {
			return
		}
	}
}

// readClient reads a client conn that cannot announce its datagrams.
func (f *udpFlow) readClient() {
	defer close(f.readerDone)
	bufp := datagramBufPool.Get().(*[]byte)
	defer datagramBufPool.Put(bufp)
	for {
		n, err := f.client.Read(*bufp)
		if err != nil {
			f.endByClient(err)
			return
		}
		f.outMu.Lock()
		ok := !f.done.Load() && f.fromClient((*bufp)[:n])
		f.outMu.Unlock()
		if !ok {
			return
		}
	}
}

// fromClient sends one of the client's datagrams to the destination. It
// never waits: a datagram the host socket cannot take at once is dropped,
// as a full queue drops it. It returns false once the flow has ended.
// Under outMu.
func (f *udpFlow) fromClient(d []byte) bool {
	f.touch()
	if pol := f.p.cfg.Policy.Load(); pol != f.pol && !f.reloaded(pol) {
		return false // dropped: the flow is denied now
	}
	if f.smuggled(d) {
		f.p.udp.quicSmuggled.Add(1)
		return true // dropped
	}
	if f.dns != nil {
		f.dns.query(d)
	}
	f.wbuf = d
	err := f.upRaw.Write(f.writeFn)
	f.wbuf = nil
	if err == nil {
		err, f.werr = f.werr, nil
	}
	switch {
	case err == nil:
		f.bytesOut += int64(len(d))
		f.sentOut++
	case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.ENOBUFS):
		// dropped
	default:
		// A destination port that answered ICMP unreachable shows up
		// here as a refused write: the flow ends like a dead one.
		f.end(err)
		return false
	}
	return true
}

// smuggled reports a client datagram that would start a QUIC connection
// the policy never decided on: a second connection multiplexed on a QUIC
// flow already decided (another ClientHello, another name), or a QUIC
// Initial on a flow that began as something else and was decided as plain
// UDP. On a udp flow whose Initials pass, it notes the first one in
// quicUnread instead. Under outMu.
func (f *udpFlow) smuggled(d []byte) bool {
	switch {
	case f.quic != nil:
		return !f.quic.Belongs(d)
	case f.guardInitials:
		return quic.IsInitial(d)
	case !f.quicUnread && len(d) > 0 && d[0]&0x80 != 0 && quic.IsInitial(d):
		// Relayed, since nothing in the policy looks at names, but noted:
		// the connection it starts has a name nobody read, and a reload
		// to a policy that looks at names must end it, as it ends the
		// same connection decided as quic. The first byte (a long
		// header) keeps the check off most datagrams.
		f.quicUnread = true
		f.p.udp.quicPaths.opened(f) // its new paths are decided as it is
	}
	return false
}

func (f *udpFlow) writeHost(fd uintptr) bool {
	for {
		_, err := syscall.Write(int(fd), f.wbuf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			f.werr = os.NewSyscallError("write", err)
		}
		return true // never wait for room
	}
}

// serveHost waits on the host socket and relays what arrives to the client,
// until the flow ends: idle, its last DNS answer lingered, an error, or the
// client's side closed.
func (f *udpFlow) serveHost() {
	f.setHostDeadline(f.deadline())
	for {
		err := f.upRaw.Read(f.readFn)
		switch {
		case f.done.Load(): // ended (end, endDenied): the flow is finished
			return
		case f.hostErr != nil:
			f.end(f.hostErr)
			return
		case f.clientGone != nil:
			f.endClientGone(f.clientGone)
			return
		case err == nil: // readHost asks for the deadline to be looked at
		case errors.Is(err, os.ErrDeadlineExceeded):
		default: // the socket failed under it
			f.end(nil)
			return
		}
		// Decided again only for a datagram waiting: a flow that a reload
		// finds quiet ends at its deadline as it would have (idle, its
		// DNS answers lingered), not as denied by a policy it never
		// carried a datagram under.
		if f.hostDecide {
			f.hostDecide = false
			if !f.hostReloaded() {
				f.end(nil)
				return
			}
		}
		d := f.deadline()
		if !time.Now().Before(d) {
			f.endIdle()
			return
		}
		f.setHostDeadline(d)
	}
}

// deadline is when the flow ends unless a datagram passes first: after the
// idle timeout, after the unanswered timeout while the destination has sent
// nothing, or, for a DNS flow with every query answered, the linger after
// its last query or answer. A DNS lookup's timeouts count from its last
// query or answer, not its last datagram. Only the host loop calls it (it
// reads bytesIn).
func (f *udpFlow) deadline() time.Time {
	last := monoclock.Time(f.last.Load())
	if f.dns != nil {
		if since, lookup, quiet := f.dns.lookupSince(); quiet {
			return monoclock.Time(since).Add(min(dnsLinger, f.p.cfg.UDPIdleTimeout))
		} else if lookup {
			last = monoclock.Time(since)
		}
	}
	if f.bytesIn == 0 { // unanswered: the packet stack forgets the flow sooner too
		return last.Add(min(f.p.cfg.UDPUnansweredTimeout, f.p.cfg.UDPIdleTimeout))
	}
	return last.Add(f.p.cfg.UDPIdleTimeout)
}

// readHost relays the datagrams waiting on the host socket to the client.
// RawConn.Read calls it when the socket may be readable; it returns false
// to wait for more, true to have serveHost look at the flow, as it does
// before relaying a datagram that waits under a policy loaded since it
// last looked (hostDecide).
func (f *udpFlow) readHost(fd uintptr) bool {
	bufp := datagramBufPool.Get().(*[]byte)
	defer datagramBufPool.Put(bufp)
	buf := *bufp
	look := false
	for {
		if f.done.Load() {
			return true // ended: serveHost finishes the flow
		}
		if f.p.cfg.Policy.Load() != f.hostPol {
			// A reload: serveHost decides the flow again first, once a
			// datagram waits.
			waiting, err := datagramWaiting(fd, buf)
			switch {
			case err != nil:
				f.hostErr = err
				return true
			case !waiting:
				return look
			}
			f.hostDecide = true
			return true
		}
		n, err := syscall.Read(int(fd), buf)
		switch err {
		case nil:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return look
		default:
			f.hostErr = os.NewSyscallError("read", err)
			return true
		}
		f.touch()
		f.bytesIn += int64(n)
		if f.dns != nil && f.dns.answer(buf[:n]) {
			look = true // quiet now: the deadline shortens
		}
		if _, err := f.client.Write(buf[:n]); err != nil && err != netstack.ErrWouldBlock {
			f.clientGone = err
			return true
		}
	}
}
