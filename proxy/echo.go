package proxy

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// echoRelay relays ICMP echo through the host's unprivileged ICMP ("ping")
// sockets, so a client's ping reports the real destination's answer. One
// socket per (endpoint, client, destination, echo ID) flow; the kernel
// gives each socket its own echo ID, and replies go back to the client with
// the client's.
//
// Each flow is decided once, when its first request arrives: against the
// forbidden destinations, then the policy (protocol icmp). An allowed flow
// keeps the decision until it idles, whatever a reload says, like a UDP
// flow. A denied flow writes one deny record and stays in the table, without
// a socket, so that its further requests (a ping -f) are dropped at the cost
// of a map lookup, with no record each; it is forgotten once idle for
// EchoIdleTimeout, and decided afresh on its next request after a reload.
type echoRelay struct {
	p            *Proxy
	mu           sync.Mutex
	flows        map[echoKey]*echoSession
	denied       int // denied flows in flows, at most maxDenied
	maxDenied    int // maxDeniedEcho; lowered by tests
	warnedNoSock atomic.Bool
	warnedFull   atomic.Bool
	// foreignReplies counts echo replies dropped because they came from
	// another address than the flow's destination.
	foreignReplies atomic.Uint64
}

// maxDeniedEcho bounds the denied echo flows remembered (a few hundred bytes
// each). Beyond it, requests of new denied flows are dropped without a
// record until some idle out: a client spraying echo at countless denied
// destinations cannot grow memory, nor the access log, without bound.
const maxDeniedEcho = 1 << 16

type echoKey struct {
	endpoint     uint64
	client, dest netip.Addr
	id           uint16
}

type echoSession struct {
	// A denied flow has no conn and no serve goroutine. pol is the policy
	// that denied it, unless forbidden: a forbidden destination stays
	// forbidden whatever a reload says. timer forgets the flow once it
	// idles. All set before the flow is in the table, never changed.
	denied    bool
	forbidden bool
	pol       *policy.Policy
	timer     *time.Timer
	rec       *records.Record // the deny record, written by whoever created the flow

	conn     *icmp.PacketConn
	dest     net.Addr
	destIP   netip.Addr // dest, to tell the destination's replies from others'
	v6       bool
	last     atomic.Int64
	requests atomic.Int64
	bytesOut atomic.Int64
	bytesIn  atomic.Int64
	latest   atomic.Pointer[netstack.EchoRequest] // the reply path of the newest request
}

func (r *echoRelay) init(p *Proxy) {
	r.p = p
	r.flows = make(map[echoKey]*echoSession)
	r.maxDenied = maxDeniedEcho
}

// HandleEcho implements netstack.Handler. It runs on the packet path, so it
// only writes to a socket; replies come back on the flow's own goroutine.
// A request of a denied flow is dropped without an answer, and without
// allocating.
func (p *Proxy) HandleEcho(req netstack.EchoRequest) {
	now := time.Now()
	f, isNew := p.echo.flow(&req, now)
	if f == nil {
		req.DropUnavailable()
		return
	}
	f.last.Store(now.UnixNano())
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
	if err == nil {
		_, err = f.conn.WriteTo(b, f.dest)
	}
	if err != nil {
		slog.Debug("relaying echo request", "dest", req.Flow.Dest.Addr(), "err", err)
		return
	}
	f.requests.Add(1)
	f.bytesOut.Add(int64(len(req.Data)))
}

// flow returns the request's flow, deciding and creating it if there is
// none (isNew), or nil if it cannot be relayed. A denied flow's record is for
// the caller to write, outside the lock.
func (r *echoRelay) flow(req *netstack.EchoRequest, now time.Time) (f *echoSession, isNew bool) {
	k := echoKey{req.Flow.Endpoint, req.Flow.Client.Addr(), req.Flow.Dest.Addr(), req.ID}
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.flows[k]; f != nil {
		if !f.denied || f.forbidden || f.pol == r.p.cfg.Policy.Load() {
			return f, false
		}
		// Denied by a policy since replaced: decide again, as TCP and UDP
		// decide each new connection or datagram with the current policy.
		f.timer.Stop()
		r.forget(k, f)
	}

	rec := newRecord("icmp", req.Flow)
	if reason := r.p.forbidden(req.Flow.Dest.Addr()); reason != "" {
		return r.addDenied(k, rec, reason, true, nil, now)
	}
	pol := r.p.cfg.Policy.Load()
	d := pol.Decide(policy.Subject{
		Protocol: policy.ProtoICMP, Dest: req.Flow.Dest, Client: req.Flow.Client.Addr(), Endpoint: rec.Endpoint,
	})
	rec.Rule, rec.Action = d.Rule, d.Action.String()
	if d.Action == policy.Deny {
		return r.addDenied(k, rec, "denied by policy", false, pol, now)
	}

	network, laddr := "udp4", "0.0.0.0"
	if req.IPv6() {
		network, laddr = "udp6", "::"
	}
	conn, err := icmp.ListenPacket(network, laddr)
	if err != nil {
		if !r.warnedNoSock.Swap(true) {
			slog.Warn("ICMP echo cannot be relayed: the host allows no unprivileged ICMP sockets "+
				"(set net.ipv4.ping_group_range to include the appliance's group); echo requests are dropped and counted",
				"err", err)
		}
		return nil, false
	}
	dest := req.Flow.Dest.Addr()
	f = &echoSession{conn: conn, v6: req.IPv6(), dest: &net.UDPAddr{IP: dest.AsSlice()}, destIP: dest.Unmap()}
	f.last.Store(now.UnixNano())
	r.flows[k] = f
	r.p.stats.echoActive.Add(1)
	go r.serve(k, f, rec)
	return f, true
}

// addDenied remembers a denied flow until it idles, and returns it as new,
// for its record to be written; r.mu is held. When too many are remembered
// already it returns a denied flow that is neither in the table nor new: the
// request is dropped without a record, and so are the flow's next ones until
// there is room.
func (r *echoRelay) addDenied(k echoKey, rec *records.Record, reason string, forbidden bool, pol *policy.Policy, now time.Time) (*echoSession, bool) {
	rec.Error = reason
	if r.denied >= r.maxDenied {
		if !r.warnedFull.Swap(true) {
			slog.Warn("too many denied ICMP echo flows remembered; echo requests of further denied flows "+
				"are dropped without an access record until some have been idle for the echo idle timeout",
				"limit", r.maxDenied)
		}
		return &noRoomDenied, false
	}
	f := &echoSession{denied: true, forbidden: forbidden, pol: pol, rec: rec}
	f.last.Store(now.UnixNano())
	idle := r.p.cfg.EchoIdleTimeout
	// The callback takes r.mu, which is held here, so it sees f.timer set.
	f.timer = time.AfterFunc(idle, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.flows[k] != f {
			return // decided again after a reload
		}
		if rest := time.Until(time.Unix(0, f.last.Load()).Add(idle)); rest > 0 {
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
}

// serve reads the destination's replies for one echo flow until it idles.
func (r *echoRelay) serve(k echoKey, f *echoSession, rec *records.Record) {
	start := time.Now()
	defer r.p.stats.echoActive.Add(-1)
	idle := r.p.cfg.EchoIdleTimeout
	proto := 1
	if f.v6 {
		proto = 58
	}
	var replies int64
	buf := make([]byte, 65536)
	for {
		_ = f.conn.SetReadDeadline(time.Unix(0, f.last.Load()).Add(idle))
		n, from, err := f.conn.ReadFrom(buf)
		if err != nil {
			if time.Since(time.Unix(0, f.last.Load())) < idle {
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
		// The kernel replaced the client's echo ID with the socket's; the
		// sequence number and data are the destination's own.
		reply := *req
		reply.Seq = uint16(echo.Seq)
		reply.Reply(echo.Data)
		replies++
		f.bytesIn.Add(int64(len(echo.Data)))
	}
	r.mu.Lock()
	delete(r.flows, k)
	r.mu.Unlock()
	f.conn.Close()
	rec.Packets = f.requests.Load()
	rec.BytesOut, rec.BytesIn = f.bytesOut.Load(), f.bytesIn.Load()
	if replies == 0 { // not bytesIn: a reply without data (ping -s 0) is a reply
		rec.Result = "timeout"
	}
	r.p.finish(rec, start)
}
