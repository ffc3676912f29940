package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// echoRelay relays ICMP echo through the host's unprivileged ICMP ("ping")
// sockets, so a client's ping reports the real destination's answer. One
// socket per (endpoint, client, destination, echo ID) flow; the kernel
// gives each socket its own echo ID, and replies go back to the client with
// the client's.
//
// Each flow is decided once, when its first request arrives: against the
// forbidden destinations, then the policy (protocol icmp). An allowed flow
// is decided again on its next request or reply after a reload, like a UDP
// flow: one the new policy denies ends, that packet dropped, its record
// saying so, and is remembered as a denied flow (echoreload.go). A denied flow writes one deny record and stays in the table, without
// a socket, so that its further requests (a ping -f) are dropped at the cost
// of a map lookup, with no record each; it is forgotten once idle for
// EchoIdleTimeout, and decided afresh on its next request after a reload.
//
// An allowed flow holds a host ping socket, a goroutine and a reply buffer
// for as long as it lives, and the host has only so many ping idents (one
// per socket, about 65,000 per namespace) and file descriptors: each client
// may hold MaxEchoFlowsPerClient of them at once, so that one client
// sweeping echo IDs cannot take them all from the others.
type echoRelay struct {
	p          *Proxy
	mu         sync.Mutex
	flows      map[echoKey]*echoSession
	closed     bool // set by close: no new flow is relayed
	denied     int  // denied flows in flows, at most maxDenied
	maxDenied  int  // maxDeniedEcho; lowered by tests
	warnedFull atomic.Bool

	// deniedShares counts each client's denied flows in flows, at most
	// deniedShare each: maxDeniedEcho/deniedEchoShares, lowered by tests.
	deniedShares udpShares
	deniedShare  int
	// warnedSock is set once the cause of a ping socket that could not be
	// opened has been logged, one flag per echoSockCause.
	warnedSock [echoSockCauses]atomic.Bool
	// shares counts each client's allowed flows; shareDrops the requests
	// of new flows dropped because their client held its share.
	shares     udpShares
	shareDrops atomic.Uint64
	// foreignReplies counts echo replies dropped because they came from
	// another address than the flow's destination.
	foreignReplies atomic.Uint64
}

// DefaultMaxEchoFlowsPerClient is how many allowed echo flows (a ping
// each, one per echo ID and destination) one client may hold at once unless
// Config.MaxEchoFlowsPerClient says otherwise. A host, even one pinging
// many destinations for monitoring, runs a few pings at a time; 64 host
// sockets per client leave the host's ping idents and descriptors to the
// other clients.
const DefaultMaxEchoFlowsPerClient = 64

// maxDeniedEcho bounds the denied echo flows remembered (a few hundred bytes
// each). Beyond it, requests of new denied flows are dropped without a
// record until some idle out: a client spraying echo at countless denied
// destinations cannot grow memory, nor the access log, without bound.
const maxDeniedEcho = 1 << 16

// deniedEchoShares is how many clients' worth of denied echo flows are
// remembered: each client may hold maxDeniedEcho/deniedEchoShares (1,024)
// of them. Without a share one client could fill the pool, and every
// other client's new denied flows would go unrecorded. 1,024 is more than
// a client pinging denied destinations by mistake holds in an idle
// timeout; a client over it has its further denied flows dropped without
// a record, as all were before once the pool was full.
const deniedEchoShares = 64

type echoKey struct {
	endpoint     uint64
	client, dest netip.Addr
	id           uint16
}

type echoSession struct {
	// A denied flow has no conn and no serve goroutine. pol is the policy
	// that decided the flow, unless forbidden: a forbidden destination
	// stays forbidden whatever a reload says. timer forgets the flow once
	// it idles. All set before the flow is in the table, never changed, but
	// an allowed flow's pol, which a reload that still allows it replaces
	// under echoRelay.mu.
	denied    bool
	forbidden bool
	pol       *policy.Policy
	timer     *time.Timer
	rec       *records.Record // the deny record, written by whoever created the flow

	conn     *icmp.PacketConn
	dest     net.Addr
	destIP   netip.Addr // dest, to tell the destination's replies from others'
	share    shareKey   // the client's, in echoRelay.shares (denied: deniedShares) while the flow lives
	v6       bool
	last     atomic.Int64 // when the last request came (monoclock.Stamp)
	requests atomic.Int64
	bytesOut atomic.Int64
	bytesIn  atomic.Int64
	latest   atomic.Pointer[netstack.EchoRequest] // the reply path of the newest request
	// reloadRule, reloadPolicy (its ID) and reloadWhy say why a reload
	// ended an allowed flow (under echoRelay.mu): serve's record writes
	// them.
	reloadRule, reloadPolicy, reloadWhy string
}

func (r *echoRelay) init(p *Proxy) {
	r.p = p
	r.flows = make(map[echoKey]*echoSession)
	r.maxDenied = maxDeniedEcho
	r.deniedShare = maxDeniedEcho / deniedEchoShares
	r.shares.what = "ICMP echo flows, its share"
}

func (p *Proxy) echoShareLimit() int {
	if n := p.cfg.MaxEchoFlowsPerClient; n > 0 {
		return n
	}
	return DefaultMaxEchoFlowsPerClient
}

// HandleEcho implements netstack.Handler. It runs on the packet path, so it
// only writes to a socket; replies come back on the flow's own goroutine.
// A request of a denied flow is dropped without an answer, and without
// allocating.
func (p *Proxy) HandleEcho(req netstack.EchoRequest) {
	now := time.Now()
	f, isNew, shareRec := p.echo.flow(&req, now)
	if f == nil {
		req.DropUnavailable()
		return
	}
	if f == &echoClosed {
		return
	}
	if f == &echoShareFull {
		if shareRec != nil { // as for UDP: a drop for a share, not a denial
			shareRec.Action, shareRec.Result = policy.Deny.String(), "denied"
			p.finish(shareRec, now)
		}
		return
	}
	f.last.Store(monoclock.Stamp(now))
	if f.denied {
		if isNew {
			p.denyEarly(f.rec, now, clientShareKey(req.Flow), f.rec.Error)
		} else if f == &noRoomDenied {
			p.stats.echoUnrecorded.Add(1)
		}
		return
	}
	r := req // only requests that are relayed escape to the heap
	f.latest.Store(&r)
	typ := icmp.Type(ipv4.ICMPTypeEcho)
	if f.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(req.ID), Seq: int(req.Seq), Data: req.Data}}
	b, err := msg.Marshal(nil)
	// Counted before the write: its reply can come back, reach the client
	// and the flow end (Close, a reload) before this goroutine runs again,
	// and the record must not say fewer requests than were answered.
	f.requests.Add(1)
	f.bytesOut.Add(int64(len(req.Data)))
	if err == nil {
		_, err = f.conn.WriteTo(b, f.dest)
	}
	if testHookEchoSent != nil {
		testHookEchoSent()
	}
	if err != nil {
		f.requests.Add(-1)
		f.bytesOut.Add(-int64(len(req.Data)))
		slog.Debug("relaying echo request", "dest", req.Flow.Dest.Addr(), "err", err)
	}
}

// testHookEchoSent, if set, runs after HandleEcho's write of a request (a
// test standing in for the packet path descheduled there).
var testHookEchoSent func()

// flow returns the request's flow, deciding and creating it if there is
// none (isNew), or nil if it cannot be relayed. A denied flow's record is for
// the caller to write, outside the lock. A new allowed flow whose client
// holds its share already is &echoShareFull, not remembered (the client's
// next request is decided afresh), with a record to write at most every
// shareRecordEvery per client.
func (r *echoRelay) flow(req *netstack.EchoRequest, now time.Time) (f *echoSession, isNew bool, shareRec *records.Record) {
	k := echoKey{req.Flow.Endpoint, req.Flow.Client.Addr(), req.Flow.Dest.Addr(), req.ID}
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.flows[k]; f != nil {
		switch pol := r.p.cfg.Policy.Load(); {
		case f.forbidden || f.pol == pol:
			return f, false, nil
		case !f.denied:
			return r.reloaded(k, f, req, pol, now), false, nil
		}
		// Denied by a policy since replaced: decide again, as TCP and UDP
		// decide each new connection or datagram with the current policy.
		f.timer.Stop()
		r.forget(k, f)
	}

	rec := newRecord("icmp", req.Flow)
	if reason := r.p.forbidden(req.Flow.Dest.Addr()); reason != "" {
		f, isNew = r.addDenied(k, clientShareKey(req.Flow), rec, reason, true, nil, now)
		return f, isNew, nil
	}
	pol := r.p.cfg.Policy.Load()
	d := pol.Decide(policy.Subject{
		Protocol: policy.ProtoICMP, Dest: req.Flow.Dest, Client: req.Flow.Client.Addr(), Endpoint: rec.Endpoint,
	})
	rec.Rule, rec.Action, rec.Policy = d.Rule, d.Action.String(), d.Policy
	if d.Action == policy.Deny {
		f, isNew = r.addDenied(k, clientShareKey(req.Flow), rec, "denied by policy", false, pol, now)
		return f, isNew, nil
	}

	share := clientShareKey(req.Flow)
	if ok, record := r.shares.acquire(share, r.p.echoShareLimit(), now); !ok {
		r.shareDrops.Add(1)
		if record == "" {
			return &echoShareFull, false, nil
		}
		rec.Rule, rec.Policy, rec.Error = "", "", record
		return &echoShareFull, false, rec
	}
	if r.closed {
		r.shares.release(share)
		return &echoClosed, false, nil
	}
	network, laddr := "udp4", "0.0.0.0"
	if req.IPv6() {
		network, laddr = "udp6", "::"
	}
	conn, err := icmp.ListenPacket(network, laddr)
	if err != nil {
		r.shares.release(share)
		if c := echoSockCauseOf(err); !r.warnedSock[c].Swap(true) {
			slog.Warn("ICMP echo cannot be relayed: "+echoSockWhy[c]+"; echo requests that need a new socket are dropped and counted",
				"err", err)
		}
		return nil, false, nil
	}
	dest := req.Flow.Dest.Addr()
	f = &echoSession{conn: conn, v6: req.IPv6(), dest: &net.UDPAddr{IP: dest.AsSlice()}, destIP: dest.Unmap(), share: share, pol: pol}
	f.last.Store(monoclock.Stamp(now))
	r.flows[k] = f
	r.p.stats.echoActive.Add(1)
	go r.serve(k, f, rec, pol)
	return f, true, nil
}

// echoShareFull stands for the new flows of a client at its share. It is
// never in the table, and its fields are never written but last.
var echoShareFull = echoSession{}

// echoClosed stands for the new allowed flows that arrive once the relay
// is closed: dropped, never in the table.
var echoClosed = echoSession{}

// close ends every allowed echo flow: closing its ping socket wakes its
// serve goroutine, which writes the flow's record and returns. Nothing
// else would end it before its idle timeout (up to EchoIdleTimeout after
// its last request): its socket is the host's, not the packet stack's,
// so closing the stack leaves it open, and a drain that waited for it
// would give up and lose its record. New allowed flows are dropped from
// then on.
func (r *echoRelay) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, f := range r.flows {
		if !f.denied {
			_ = f.conn.Close()
		}
	}
}

// Why a ping socket could not be opened, for the warning.
const (
	echoSockDenied   = iota // EACCES: ping_group_range
	echoSockNoFDs           // EMFILE, ENFILE
	echoSockNoIdents        // EADDRINUSE: every ping ident taken
	echoSockOther
	echoSockCauses
)

var echoSockWhy = [echoSockCauses]string{
	echoSockDenied: "the host allows no unprivileged ICMP sockets " +
		"(set net.ipv4.ping_group_range to include the appliance's group)",
	echoSockNoFDs:    "the appliance has run out of file descriptors",
	echoSockNoIdents: "the host has no ICMP echo identifier left for another ping socket (about 65,000 per network namespace)",
	echoSockOther:    "a ping socket could not be opened",
}

func echoSockCauseOf(err error) int {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return echoSockDenied
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return echoSockNoFDs
	case errors.Is(err, syscall.EADDRINUSE), errors.Is(err, syscall.EAGAIN):
		return echoSockNoIdents
	}
	return echoSockOther
}

// addDenied remembers a denied flow until it idles, and returns it as new,
// for its record to be written; r.mu is held. When too many are remembered
// already, or its client (share) holds its share of them, it returns a
// denied flow that is neither in the table nor new: the request is dropped
// without a record, and so are the flow's next ones until there is room.
func (r *echoRelay) addDenied(k echoKey, share shareKey, rec *records.Record, reason string, forbidden bool, pol *policy.Policy, now time.Time) (*echoSession, bool) {
	rec.Error = reason
	if ok, _ := r.deniedShares.acquire(share, r.deniedShare, now); !ok {
		return &noRoomDenied, false // the client's own doing: no warning
	}
	if r.denied >= r.maxDenied {
		r.deniedShares.release(share)
		if !r.warnedFull.Swap(true) {
			slog.Warn("too many denied ICMP echo flows remembered; echo requests of further denied flows "+
				"are dropped without an access record until some have been idle for the echo idle timeout",
				"limit", r.maxDenied)
		}
		return &noRoomDenied, false
	}
	f := &echoSession{denied: true, forbidden: forbidden, pol: pol, rec: rec, share: share}
	f.last.Store(monoclock.Stamp(now))
	idle := r.p.cfg.EchoIdleTimeout
	// The callback takes r.mu, which is held here, so it sees f.timer set.
	f.timer = time.AfterFunc(idle, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.flows[k] != f {
			return // decided again after a reload
		}
		if rest := idleLeft(f.last.Load(), idle); rest > 0 {
			f.timer.Reset(rest)
			return
		}
		r.forget(k, f)
	})
	r.flows[k] = f
	r.denied++
	return f, true
}

// noRoomDenied stands for the denied flows there is no room to remember.
// It is never in the table, and its fields are never written but last,
// which is harmless to share.
var noRoomDenied = echoSession{denied: true}

// forget removes a denied flow from the table; r.mu is held.
func (r *echoRelay) forget(k echoKey, f *echoSession) {
	delete(r.flows, k)
	r.denied--
	r.deniedShares.release(f.share)
}

// echoReplyBuf is the size of a flow's reply buffer: the inner MTU's
// largest, whole ICMP message and more. No larger reply could reach the
// client (EchoRequest.Reply drops, and counts, what does not fit the MTU),
// and a message cut short to fit the buffer is such a one.
const echoReplyBuf = netstack.DefaultMTU

// serve reads the destination's replies for one echo flow until it idles:
// EchoIdleTimeout after its last request, or, until a reply has gone out
// to the client, UDPUnansweredTimeout after it, as for UDP: the packet
// stack forgets an unanswered flow then too, and a later reply could not
// reach the client.
//
// pol is the policy that opened the flow: a reply that comes under another
// is decided on before it is relayed (replyReloaded).
func (r *echoRelay) serve(k echoKey, f *echoSession, rec *records.Record, pol *policy.Policy) {
	start := time.Now()
	defer r.p.stats.echoActive.Add(-1)
	idle := r.p.cfg.EchoIdleTimeout
	unanswered := min(r.p.cfg.UDPUnansweredTimeout, idle)
	proto := 1
	if f.v6 {
		proto = 58
	}
	var replies, dropped int64 // replies sent to the client; replies the packet stack dropped
	var dropErr error          // why the last dropped reply was
	seen := pol                // the policy the flow was last decided under, as serve knows
	deadline := func() time.Time {
		if replies == 0 {
			return monoclock.Time(f.last.Load()).Add(unanswered)
		}
		return monoclock.Time(f.last.Load()).Add(idle)
	}
	buf := make([]byte, echoReplyBuf)
	for {
		_ = f.conn.SetReadDeadline(deadline())
		n, from, err := f.conn.ReadFrom(buf)
		if err != nil {
			// Closed by close (the proxy closing): the flow ends now. Any
			// other error is retried until the flow idles, but a closed
			// socket fails every read at once.
			if !errors.Is(err, net.ErrClosed) && time.Now().Before(deadline()) {
				continue
			}
			break
		}
		// The kernel hands a ping socket every echo reply that carries its
		// ident, from whoever sent it: anyone who can reach the
		// appliance's address could answer the client's ping in the
		// destination's name.
		if ua, ok := from.(*net.UDPAddr); !ok || ua.AddrPort().Addr().Unmap() != f.destIP {
			r.foreignReplies.Add(1)
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || (m.Type != ipv4.ICMPTypeEchoReply && m.Type != ipv6.ICMPTypeEchoReply) {
			continue
		}
		req := f.latest.Load()
		if req == nil {
			continue // not an answer: no request has gone out yet
		}
		if pol := r.p.cfg.Policy.Load(); pol != seen {
			var ok bool
			if seen, ok = r.replyReloaded(k, f, time.Now()); !ok {
				break // ended by a reload: the reply is dropped, the record says why
			}
		}
		// The kernel replaced the client's echo ID with the socket's; the
		// sequence number and data are the destination's own.
		reply := *req
		reply.Seq = uint16(echo.Seq)
		// A reply the packet stack dropped (larger than the inner MTU, say)
		// never reached the client: it is neither a reply nor bytes_in.
		if err := reply.Reply(echo.Data); err != nil {
			dropped, dropErr = dropped+1, err
			continue
		}
		replies++
		f.bytesIn.Add(int64(len(echo.Data)))
	}
	r.mu.Lock()
	if r.flows[k] == f { // not if a reload ended it: its denied successor is there
		delete(r.flows, k)
	}
	reloadRule, reloadPolicy, reloadWhy := f.reloadRule, f.reloadPolicy, f.reloadWhy
	r.mu.Unlock()
	f.conn.Close()
	r.shares.release(f.share)
	rec.Packets = f.requests.Load()
	rec.BytesOut, rec.BytesIn = f.bytesOut.Load(), f.bytesIn.Load()
	if replies == 0 { // not bytesIn: a reply without data (ping -s 0) is a reply
		rec.Result = "timeout"
		if dropped > 0 { // the destination did answer: say why the client never saw it
			what := "the destination's reply was dropped"
			if dropped > 1 {
				what = fmt.Sprintf("the destination's %d replies were dropped, the last", dropped)
			}
			rec.Error = "no reply reached the client: " + what + ": " + dropErr.Error()
		}
	}
	if reloadWhy != "" {
		rec.Rule, rec.Action, rec.Policy = reloadRule, policy.Deny.String(), reloadPolicy
		rec.Result, rec.Error = "denied", "ended by a policy reload: "+reloadWhy
	}
	r.p.finish(rec, start)
}
