package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// HandleTCP implements netstack.Handler. The destination is dialled before
// the client's handshake completes, so a refused or unreachable destination
// reaches the client as a RST, the way a direct connection would fail. A
// flow the policy denies on its addresses alone is refused before anything
// is dialled; one that only a name could let through is dialled only once
// its first bytes have been read and allowed (tcpname.go); the rest is
// decided once the first bytes say what it is.
func (p *Proxy) HandleTCP(req *netstack.TCPRequest) {
	p.handleTCP(req.Flow, (*stackRequest)(req))
}

// tcpAcceptor completes or refuses a client's TCP handshake: the netstack's
// request, or in tests a loopback connection.
type tcpAcceptor interface {
	Accept() (net.Conn, error)
	Reject()
}

// stackRequest is a netstack.TCPRequest as a tcpAcceptor; the conversion
// costs nothing, where a closure would cost an allocation per connection.
type stackRequest netstack.TCPRequest

func (r *stackRequest) Accept() (net.Conn, error) {
	c, err := (*netstack.TCPRequest)(r).Accept()
	if err != nil {
		return nil, err // not a nil *netstack.Conn in a non-nil net.Conn
	}
	return c, nil
}

func (r *stackRequest) Reject() { (*netstack.TCPRequest)(r).Reject() }

func (p *Proxy) handleTCP(flow netstack.FlowInfo, req tcpAcceptor) {
	start := time.Now()
	rec := newRecord("tcp", flow)
	key := clientShareKey(flow)
	if reason := p.forbidden(flow.Dest.Addr()); reason != "" {
		req.Reject()
		p.denyEarly(rec, start, key, reason)
		return
	}
	if reason := p.forbiddenSenderPort(false, flow.Dest); reason != "" {
		req.Reject() // and dialTCP refuses it too, on every path that dials
		p.denyEarly(rec, start, key, reason)
		return
	}
	pol := p.cfg.Policy.Load()
	subj := policy.Subject{Dest: flow.Dest, Client: flow.Client.Addr(), Endpoint: rec.Endpoint}
	if d, ok := pol.DecideEarly(subj); ok {
		req.Reject()
		rec.Rule, rec.Policy = d.Rule, d.Policy
		p.denyEarly(rec, start, key, "denied by policy")
		return
	}
	// Until its first bytes come, a connection costs a dialled upstream (or,
	// when only a name could let it through, none), two goroutines and the
	// sniffing buffers, and waits with no time limit (nameWait when
	// nothing is dialled): a client may hold only so many of them.
	if ok, record := p.tcp.waiting.acquire(key, p.tcpWaitingLimit(), start); !ok {
		p.tcp.waitingDrops.Add(1) // before the RST, which a client may act on at once
		req.Reject()
		if record != "" {
			rec.Rule = ""
			p.deny(rec, start, record)
		}
		return
	}
	p.stats.tcpActive.Add(1)
	if pol.OnlyNameAllows(subj) {
		p.serveNamed(req, &tcpSession{p: p, rec: rec, start: start, pol: pol, subj: subj, waiting: key, holding: true})
		return
	}
	up, err := p.dialTCP(context.Background(), flow.Dest.String())
	if err != nil {
		p.tcp.waiting.release(key)
		req.Reject()
		p.stats.tcpDialErrors.Add(1)
		rec.Result, rec.Error = records.DialResult(err), err.Error()
		// The client sent a SYN and nothing more: the record comes from
		// its bucket (denylimit.go), whatever ended the dial.
		p.finishDialError(rec, start, key)
		p.stats.tcpActive.Add(-1)
		return
	}
	client, err := req.Accept()
	if err != nil {
		p.tcp.waiting.release(key)
		up.Close()
		rec.Result, rec.Error = "error", err.Error()
		p.endTCP(rec, start)
		return
	}
	s := &tcpSession{p: p, rec: rec, start: start, pol: pol, subj: subj, up: up, waiting: key}
	s.serve(client)
}

// DefaultMaxWaitingTCPPerClient is how many TCP connections one client may
// have waiting for their first bytes (or their destination's) at once
// unless Config.MaxWaitingTCPPerClient says otherwise. Real clients send at
// once, or speak a server-first protocol whose server answers at once; the
// ones that wait are preconnected sockets a browser keeps a few of per
// host. A client that opens connections and sends nothing holds an upstream
// connection and about 40 KiB each for as long as it likes, and up to
// 192 KiB more each in bytes it sends past a hole at the stream's start,
// which the stack queues out of order (netstack's initial receive buffer):
// the share bounds that to about 40 MiB per client, 230 MiB at most.
const DefaultMaxWaitingTCPPerClient = 1024

// tcpState is the proxy's TCP state beyond single connections.
type tcpState struct {
	waiting      udpShares
	waitingDrops atomic.Uint64
	// waiters are the connections dialled first waiting for their first
	// bytes, which a reload looks at (tcpwaitreload.go).
	waiters tcpWaiters
	// lingers counts each client's connections lingering after its flow
	// ended (lingershare.go), and lingerCuts the lingers cut short for it.
	lingers    udpShares
	lingerCuts atomic.Uint64
}

func (p *Proxy) tcpWaitingLimit() int {
	if n := p.cfg.MaxWaitingTCPPerClient; n > 0 {
		return n
	}
	return DefaultMaxWaitingTCPPerClient
}

// endTCP writes a TCP connection's record and counts it as ended.
func (p *Proxy) endTCP(rec *records.Record, start time.Time) {
	p.finish(rec, start)
	p.stats.tcpActive.Add(-1)
}

// tcpSession is one accepted TCP connection on its way through
// classification and policy to the relay, or to interception.
type tcpSession struct {
	p      *Proxy
	rec    *records.Record // the connection's record
	vouch  destVouch       // what its destination check passed on
	start  time.Time
	pol    *policy.Policy
	subj   policy.Subject
	client net.Conn // the client, with the sniffed bytes still to read
	// up is the dialled destination; nil while a flow that only a name
	// could let through has not been allowed (tcpname.go).
	up net.Conn
	// waiting is the client's key in tcpState.waiting, held until the
	// connection is classified.
	waiting shareKey
	// holding says the slot in tcpState.waiting is still held past
	// classification, for a flow only a name could let through: until its
	// destination is dialled and checked, or it is refused
	// (releaseWaiting); a bump hands it to the interceptor, which checks
	// and dials (intercept).
	holding bool
	// nameUnread says the connection looked like TLS or HTTP but its name
	// could not be read, and is served as TCP because the policy has no
	// rule that needs a name (unreadable).
	nameUnread bool
}

// serve classifies the connection by its first bytes and serves it.
func (s *tcpSession) serve(accepted net.Conn) {
	var (
		br    *bufio.Reader
		res   sniff.Result
		err   error
		stop  func() ([]byte, error)
		woken waitVerdict
	)
	// A loop, not a call back into serve: reloads flipping between a
	// policy of names and one of addresses may send a silent connection
	// round it any number of times.
	for {
		br = sniffReaders.Get().(*bufio.Reader)
		br.Reset(accepted)
		var deadline *serverFirstWatch
		deadline, stop = watchServerFirst(accepted, s.up)
		// A reload that denies the addresses, or lets only a name
		// through, ends the wait (tcpwaitreload.go), and so does one
		// since the policy was loaded, which no sweep may have found the
		// connection for.
		s.p.tcp.waiters.add(deadline, &s.subj)
		if s.p.cfg.Policy.Load() != s.pol {
			deadline.wake()
		}
		// No time limit: a client that waits and then sends a ClientHello
		// must still meet the domain rules. A destination that speaks
		// first ends the wait (the protocol is then server-first, and
		// relayed as TCP).
		res, err = sniff.Sniff(br, deadline)
		woken = waitOn
		for err == nil && deadline.takeWake() {
			if woken = s.decideWoken(); woken != waitOn {
				break
			}
			res, err = sniff.Sniff(br, deadline) // still allowed: wait on, from what came
		}
		s.p.tcp.waiters.remove(deadline)
		if woken != waitNamed {
			break
		}
		if !s.awaitNameAfterReload(accepted, br, stop) || !s.redial(accepted) {
			return
		}
	}
	s.p.tcp.waiting.release(s.waiting)
	if early, upErr := stop(); len(early) > 0 || upErr != nil {
		s.up = &prefixConn{Conn: s.up, prefix: early, err: upErr}
	}
	s.client = &peekedConn{Conn: accepted, r: br}
	if err != nil { // the client reset or broke the connection while we waited
		s.client.Close()
		s.up.Close()
		// timeout for a client that vanished (ETIMEDOUT), as a relayed
		// flow's record says it; reset otherwise.
		// With the drain's words first when its close of the stacks
		// broke it, not the client.
		s.rec.Result, s.rec.Error = relayResultOf(err), s.p.endedError(err).Error()
		s.p.endTCP(s.rec, s.start)
		return
	}
	if woken == waitDenied {
		s.refuse(errWaitingDenied)
		return
	}
	s.classified(&res, br)
}

// classified serves the connection as its first bytes, sniffed into br,
// say it is.
func (s *tcpSession) classified(res *sniff.Result, br *bufio.Reader) {
	if !s.policyAtFirstBytes() {
		return
	}
	switch res.Kind {
	case sniff.KindTLS:
		if res.Err != nil {
			s.unreadable("tls", "ClientHello could not be read: "+res.Err.Error())
			return
		}
		s.serveTLS(&res.Hello)
	case sniff.KindHTTP, sniff.KindHTTP2Cleartext:
		// A head cut short or too large is still served: the HTTP proxy
		// reads it whole and decides on its Host. One whose request line
		// cannot be read would only be refused there, without a record.
		if errors.Is(res.Err, sniff.ErrMalformedHTTP) {
			s.unreadable("http", "request head could not be read: "+res.Err.Error())
			return
		}
		// Servers ignore blank lines before the request line; net/http,
		// which reads the head next, refuses them. They are buffered, so
		// dropping them reads nothing from the connection.
		_, _ = br.Discard(res.Blank)
		if res.Kind == sniff.KindHTTP2Cleartext {
			s.intercept(&intercept.Session{H2C: true})
			return
		}
		s.intercept(&intercept.Session{HTTP: &res.HTTP, HTTPHeadCut: res.Err != nil})
	default:
		s.serveTCP()
	}
}

// policyAtFirstBytes takes the policy in force once the client's first
// bytes have come, and reports whether the connection goes on. The policy
// loaded at the handshake may be older by then: a client may open
// connections and send nothing until after a reload (the wait has no time
// limit), and would otherwise have its ClientHello classified, decided and
// destination-checked under the policy it connected under (an audit mode
// or a check the reload turned off). The relay decides again only on what
// the first decision knew; this makes the first decision the new policy's.
// A connection its addresses alone now deny is refused, as a new one would
// be before anything is dialled.
func (s *tcpSession) policyAtFirstBytes() bool {
	pol := s.p.cfg.Policy.Load()
	if pol == s.pol {
		return true
	}
	s.pol = pol
	if d, ok := pol.DecideEarly(s.subj); ok {
		s.rec.Rule, s.rec.Policy = d.Rule, d.Policy
		s.refuse("denied by policy")
		return false
	}
	return true
}

// unreadable ends a connection that looks like TLS or HTTP but whose name
// cannot be read. Relayed as opaque bytes, it would pass every rule that
// needs the name, and a client can shape its first bytes so that a server
// accepts them and the classifier does not: it is refused whenever the
// policy has such rules, or rules for tcp, which it would match as opaque
// bytes though it is TLS or HTTP (a TLS alert or a 400, then a RST). A
// policy of addresses and ports alone decides it like any TCP connection,
// since its rules need no name and refusing would only break binary
// protocols whose first bytes look alike.
func (s *tcpSession) unreadable(kind, reason string) {
	if !s.pol.TCPNamesMatter() {
		s.nameUnread = true
		s.serveTCP()
		return
	}
	// No rule decides, but the policy does: it looks at names.
	s.rec.Kind, s.rec.Rule, s.rec.Policy = kind, "", s.pol.ID()
	if kind == "tls" {
		intercept.WriteAlert(s.client, intercept.AlertHandshakeFailure)
	} else {
		writeBadRequest(s.client)
	}
	s.refuse(reason)
}

// badRequest answers an HTTP head that cannot be read.
const badRequestBody = "gwlbproxy: the request head could not be read\n"

var badRequest = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: " + strconv.Itoa(len(badRequestBody)) + "\r\nConnection: close\r\n\r\n" + badRequestBody

func writeBadRequest(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c, badRequest)
}

// decide runs the policy for the connection as classified so far.
func (s *tcpSession) decide(protocol, domain string) policy.Decision {
	s.subj.Protocol, s.subj.Domain = protocol, domain
	d := s.pol.Decide(s.subj)
	s.rec.Rule, s.rec.Action, s.rec.Policy = d.Rule, d.Action.String(), d.Policy
	return d
}

// refuse ends a denied connection: the client gets a RST.
func (s *tcpSession) refuse(reason string) {
	s.releaseWaiting()
	intercept.Abort(s.client)
	if s.up != nil {
		s.up.Close()
	}
	s.p.deny(s.rec, s.start, reason)
	s.p.stats.tcpActive.Add(-1)
}

// relay relays the connection, and records it once both directions have
// ended; it returns at once, so that the session's goroutine, whose stack
// grew while classifying, is not what waits for the bytes of an idle flow.
func (s *tcpSession) relay() {
	rl := &tcpReload{s: s, spliced: s.rec.Kind == "tls", nameUnread: s.nameUnread}
	rl.pol.Store(s.pol)
	startWatchedRelay(s.client, s.up, s.p.stalls, rl.check, s.p.lingerTaker(s.waiting), func(n relayCounts, err error) {
		s.rec.BytesOut, s.rec.BytesIn, s.rec.BytesOutUnacked = n.out, n.in, n.outUnacked
		rl.mu.Lock()
		denied := rl.why
		rl.mu.Unlock()
		switch {
		case denied != "":
			s.rec.Result, s.rec.Error = "denied", joinError(s.rec.Error, "ended by a policy reload: "+denied)
			if cut, ok := errors.AsType[*tailCutError](err); ok {
				// The deny ended a linger: the tail it did not deliver.
				s.rec.Error = joinError(s.rec.Error, cut.Error())
			}
		case err != nil:
			// Keep what was recorded before (an audited destination mismatch).
			s.rec.Result, s.rec.Error = relayResultOf(err), joinError(s.rec.Error, s.p.endedError(err).Error())
		}
		s.p.endTCP(s.rec, s.start)
	})
}

func (s *tcpSession) serveTCP() {
	if d := s.decide(policy.ProtoTCP, ""); d.Action == policy.Deny {
		s.refuse("denied by policy")
		return
	}
	if s.dialAllowed() {
		s.relay()
	}
}

func (s *tcpSession) serveTLS(hello *sniff.ClientHello) {
	s.rec.Kind, s.rec.SNI = "tls", hello.ServerName
	setALPN(s.rec, hello.ALPN)
	// Set before any handover, so that the bumped connection's record and
	// each of its requests' records, which start from it, carry it too.
	s.rec.ECH = hello.ECH
	if hello.ECH && s.pol.DenyECH() {
		// The SNI is only the cover name of a client-facing server: no
		// rule, and no destination check, can say where this goes.
		s.rec.Rule, s.rec.Policy = "", s.pol.ID() // the policy's ech: deny
		intercept.WriteAlert(s.client, intercept.AlertAccessDenied)
		s.refuse("ClientHello offers ECH; policy ech: deny")
		return
	}
	ic := s.p.intercept
	if ic.IsTrustHost(hello.ServerName) && ic.CanBump() {
		s.intercept(&intercept.Session{Hello: hello})
		return
	}
	d := s.decide(policy.ProtoTLS, hello.ServerName)
	switch {
	case d.Action == policy.Deny:
		intercept.WriteAlert(s.client, intercept.AlertAccessDenied)
		s.refuse("denied by policy")
	case d.Action == policy.Bump && ic.CanBump():
		// Not checked here: the interceptor checks it before its own
		// ClientHello carries the name out (intercept/bumpcheck.go). A
		// flow only a name could let through goes with nothing dialled,
		// and the interceptor dials it once the check has passed: dialled
		// here, a destination the check would deny would be reached first,
		// and an open port told from a closed one.
		s.intercept(&intercept.Session{Hello: hello, Decision: d})
	default:
		if d.Action == policy.Bump { // no CA: nothing can be decrypted
			s.rec.Action, s.rec.Error = policy.Splice.String(), "bump requested but the appliance has no CA"
			d.Action = policy.Splice // spliced, the name is proven by nothing: check it
		}
		if s.p.checkDestination(context.Background(), s.pol, d, s.rec, &s.vouch, hello.ServerName, s.subj.Dest.Addr()) {
			intercept.WriteAlert(s.client, intercept.AlertAccessDenied)
			s.refuse(s.rec.Error)
			return
		}
		if s.dialAllowed() {
			s.relay()
		}
	}
}

// intercept hands the connection to package intercept, with what
// classification found in is; the connection counts as active until the
// interceptor is done with it. A flow only a name could let through goes
// with no upstream yet: the interceptor dials one for a bump once its
// destination check has passed, and for cleartext HTTP for the first
// request the policy allows (the trust page needs none). Such a
// connection's slot in its client's waiting share goes with it: the
// interceptor gives it back once a bump's destination has been checked and
// dialled, or at once for the rest (Session.ReleaseWaiting).
func (s *tcpSession) intercept(is *intercept.Session) {
	if s.holding {
		s.holding = false // the interceptor's from now on
		p, key := s.p, s.waiting
		is.ReleaseWaiting = func() { p.tcp.waiting.release(key) }
	}
	is.Client, is.Upstream, is.Policy, is.Subject = s.client, s.up, s.pol, s.subj
	is.Record, is.Start = s.rec, s.start
	// Its writes are bounded as a relay's are (stall.go); Done counts it
	// ended.
	s.p.watchSession(is, s.waiting)
	s.p.intercept.Serve(is)
}

// peekedConn reads through the buffer that holds the sniffed bytes.
type peekedConn struct {
	net.Conn
	r *bufio.Reader // nil once the sniffed bytes have been read
}

// sniffReaders recycles the readers connections are classified through.
// A reader holds a whole TLS record (16 KiB): a connection needs it only
// until the bytes it peeked have been read, not for as long as it lasts.
var sniffReaders = sync.Pool{New: func() any { return sniff.NewReader(nil) }}

// Read reads the sniffed bytes, then the connection itself. Reads never
// overlap (the relay, or goproxy's reader, is the only reader), so the
// reader can go back to the pool once empty.
func (c *peekedConn) Read(b []byte) (int, error) {
	if c.pending() {
		return c.r.Read(b) // only what is buffered: no read of the connection
	}
	return c.Conn.Read(b)
}

// pending reports whether sniffed bytes are still to be read, and gives
// the reader back once they are not.
func (c *peekedConn) pending() bool {
	if c.r == nil {
		return false
	}
	if c.r.Buffered() > 0 {
		return true
	}
	c.r.Reset(nil)
	sniffReaders.Put(c.r)
	c.r = nil
	return false
}

func (c *peekedConn) unwrap() net.Conn { return c.Conn }

// OnReadWait passes on the client connection's call before a read waits
// (netstack.Conn.OnReadWait); false when it has none.
func (c *peekedConn) OnReadWait(fn *func()) bool {
	w, ok := c.Conn.(interface{ OnReadWait(*func()) bool })
	return ok && w.OnReadWait(fn)
}

// StopReadWait passes on netstack.Conn.StopReadWait.
func (c *peekedConn) StopReadWait(fn *func()) {
	if w, ok := c.Conn.(interface{ StopReadWait(*func()) }); ok {
		w.StopReadWait(fn)
	}
}

// SendQueued passes on the client connection's count of bytes written and
// not yet acknowledged (netstack.Conn), for a reset that must not throw
// them away (intercept's abortWhenSent).
func (c *peekedConn) SendQueued() (int, error) {
	if q, ok := c.Conn.(interface{ SendQueued() (int, error) }); ok {
		return q.SendQueued()
	}
	return 0, errors.ErrUnsupported
}

// FINAcked passes on the client connection's: whether the client
// acknowledged its FIN (netstack.Conn), for the plaintext capture of a
// half-closed connection that a reset then ended (intercept's serverEnded).
func (c *peekedConn) FINAcked() bool {
	q, ok := c.Conn.(interface{ FINAcked() bool })
	return ok && q.FINAcked()
}

// CloseWrite passes a half-close on to the client connection.
func (c *peekedConn) CloseWrite() error { return closeWrite(c.Conn) }

// Abort resets the client connection.
func (c *peekedConn) Abort() { intercept.Abort(c.Conn) }

// Reclaimed passes on the client connection's: whether the packet stack
// reset it to reclaim memory (intercept.Session's records ask).
func (c *peekedConn) Reclaimed() error { return reclaimedOf(c.Conn) }

// ClientBroke passes on the client connection's (netstack.Conn's): what
// broke it when its client did, as a read took it; nil for a connection
// that cannot say (intercept.Session's records ask).
func (c *peekedConn) ClientBroke() error {
	if b, ok := c.Conn.(interface{ ClientBroke() error }); ok {
		return b.ClientBroke()
	}
	return nil
}

// AddHeld passes on to the client connection what the session holds for
// it outside the packet stack, which the memory reclaim weighs
// (netstack.Conn.AddHeld).
func (c *peekedConn) AddHeld(delta int64) {
	if h, ok := c.Conn.(interface{ AddHeld(int64) }); ok {
		h.AddHeld(delta)
	}
}

// reclaimedOf is c's Reclaimed (netstack.Conn's), nil for a connection the
// packet stack cannot reclaim.
func reclaimedOf(c net.Conn) error {
	if r, ok := c.(interface{ Reclaimed() error }); ok {
		return r.Reclaimed()
	}
	return nil
}
