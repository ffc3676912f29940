package proxy

import (
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// maxDeniedUDP bounds the denied UDP flows held open (a few KiB each, the
// stack's endpoint included). Beyond it a denied flow is closed at once,
// and each further datagram of it is decided, and recorded, again.
const maxDeniedUDP = 1 << 14

// maxDeniedUDPPerClient is a client's share of the hold (a client as the
// UDP share counts it, shareKey). Without it one client opening denied
// flows from fresh ports fills the hold, and every other client's denied
// flows then cost a decision and a record per datagram; past its share, a
// client's own denied flows are closed, so that cost falls on it alone.
// A 64th of the hold (256), as for denied echo flows (deniedEchoShares),
// not a 16th: an IPv4 address is a client of its own, and one instance
// holds 16 of them without spoofing any (a delegated /28, or secondary
// addresses), so a 16th let one instance fill the hold; at a 64th it takes
// a quarter. 256 is still more than a client retrying a few denied
// destinations holds within an idle timeout.
const maxDeniedUDPPerClient = maxDeniedUDP / deniedUDPShares

// deniedUDPShares is how many clients at their share fill the hold.
const deniedUDPShares = 64

// deniedUDP is a denied flow kept open without a host socket, its
// datagrams discarded, until it idles: a client that keeps sending (a QUIC
// client retransmitting its Initial, a flood) gives one deny record, not
// one per datagram. After a reload, its next datagram has what it was
// denied on (its subject) decided again: only if the new policy allows
// that is the flow let go, its next datagram then starting a flow decided
// afresh. Letting go on any reload would let a QUIC connection that a
// reload denied resume: its next datagram, a short-header packet, starts a
// flow decided as plain udp, on no name. A forbidden destination (pol nil)
// stays refused.
type deniedUDP struct {
	p       *Proxy
	conn    net.Conn
	ready   readableConn
	subject []udpSubject                  // what it may be: let go when a reload allows any
	pol     atomic.Pointer[policy.Policy] // the policy last found to deny it
	last    atomic.Int64                  // when a datagram last came (monoclock.Now)
	share   shareKey                      // its client's, in udpState.heldShares while it is held
	timer   *time.Timer
	closing atomic.Bool // ending: the timer fires at once
	closed  atomic.Bool
	scratch [1]byte // what a datagram is read into to discard it
}

// udpSubject is what a UDP or QUIC flow is decided on, kept with a denied
// flow held open so that a reload can decide it again.
type udpSubject struct {
	proto, name string
	ech         bool   // a QUIC ClientHello that offered ECH
	unread      bool   // a QUIC connection whose ClientHello was not read
	destCheck   string // the record's dest_check
	vouch       destVouch
	endpoint    string
	dest        netip.AddrPort
	client      netip.Addr
}

// subject returns what the flow was decided on: for QUIC, the name and ECH
// of its ClientHello.
func (f *udpFlow) subject() udpSubject {
	s := udpSubject{
		proto: policy.ProtoUDP, unread: f.quicUnread, destCheck: f.rec.DestCheck, vouch: f.vouch,
		endpoint: f.rec.Endpoint, dest: f.info.Dest, client: f.info.Client.Addr(),
	}
	if f.rec.Kind == "quic" && !f.quicUnread {
		s.proto, s.name, s.ech = policy.ProtoQUIC, f.rec.SNI, f.rec.ECH
	}
	return s
}

// redecide decides s again under pol, a policy a reload loaded, as the
// flow's first decision would have with what it knew then: why is "" when
// pol lets it through, else why not (d's rule, if any, denied it). No
// lookup is made (it runs on the packet path): a flow let through by name
// that never met a destination check pol makes is denied, unless pol only
// audits (reloadDestCheck). rec, if not nil, is the flow's record, which
// takes the audit's note of a destination left unchecked; a held flow has
// none any more.
func (p *Proxy) redecide(pol *policy.Policy, s *udpSubject, rec *records.Record) (d policy.Decision, why string) {
	switch {
	case s.unread && pol.NamesMatter():
		return d, "the flow carries a QUIC connection whose ClientHello was not read, and the policy now looks at names"
	case s.proto == policy.ProtoQUIC && s.ech && pol.DenyECH():
		return d, "ClientHello offers ECH; policy ech: deny"
	}
	d = pol.Decide(policy.Subject{Protocol: s.proto, Domain: s.name, Dest: s.dest, Client: s.client, Endpoint: s.endpoint})
	switch {
	case d.Action == policy.Deny:
		return d, "denied by policy"
	case d.Action == policy.Bump && s.proto == policy.ProtoQUIC:
		return d, quicBumpReason
	}
	if rec == nil {
		rec = &records.Record{DestCheck: s.destCheck}
	}
	return d, p.reloadDestCheck(pol, d, rec, &s.vouch, s.name, s.dest.Addr(), nil)
}

// hold keeps the flow's client end as a denied flow's, denied under pol (nil
// for a forbidden destination).
func (f *udpFlow) hold(pol *policy.Policy) {
	f.p.holdDenied(f.client, f.ready, pol, []udpSubject{f.subject()}, clientShareKey(f.info))
}

// holdDenied keeps a denied flow's client end open, or closes it when that
// cannot be done cheaply (a conn that cannot announce its datagrams), too
// many are held, or its client (share) holds its share of them. s is what
// pol denied: the connections it may be, let go when a reload allows any.
func (p *Proxy) holdDenied(conn net.Conn, ready readableConn, pol *policy.Policy, s []udpSubject, share shareKey) {
	if ready == nil {
		conn.Close()
		return
	}
	// The client's share first: a client at its share must not take a
	// place in the hold, even for a moment. The zero time asks for no
	// drop record: the flow's deny record is written already.
	if ok, _ := p.udp.heldShares.acquire(share, maxDeniedUDPPerClient, time.Time{}); !ok {
		p.udp.unheld.Add(1) // its own doing: its denials' records say enough
		conn.Close()
		return
	}
	if p.udp.held.Add(1) > maxDeniedUDP {
		p.udp.held.Add(-1)
		p.udp.heldShares.release(share)
		p.udp.unheld.Add(1)
		conn.Close()
		return
	}
	d := &deniedUDP{p: p, conn: conn, ready: ready, subject: s, share: share}
	d.pol.Store(pol)
	d.last.Store(monoclock.Now())
	d.timer = time.AfterFunc(p.cfg.UDPIdleTimeout, d.expire)
	ready.OnReadable(d.discard)
	d.discard()
}

// discard drops the waiting datagrams. On the packet path: closing the
// conn is left to the timer's goroutine.
func (d *deniedUDP) discard() {
	for {
		_, err := d.ready.TryRead(d.scratch[:])
		if err == netstack.ErrWouldBlock {
			break
		}
		if err != nil {
			d.closeSoon()
			return
		}
		d.last.Store(monoclock.Now())
	}
	if was := d.pol.Load(); was != nil {
		if pol := d.p.cfg.Policy.Load(); pol != was {
			if slices.ContainsFunc(d.subject, func(s udpSubject) bool { _, why := d.p.redecide(pol, &s, nil); return why == "" }) {
				d.closeSoon()
			} else {
				d.pol.CompareAndSwap(was, pol) // still denied: not decided again until the next reload
			}
		}
	}
}

func (d *deniedUDP) closeSoon() {
	if !d.closing.Swap(true) {
		d.timer.Reset(0)
	}
}

func (d *deniedUDP) expire() {
	if !d.closing.Load() {
		if left := idleLeft(d.last.Load(), d.p.cfg.UDPIdleTimeout); left > 0 {
			d.timer.Reset(left)
			return
		}
	}
	if d.closed.Swap(true) {
		return // closeSoon's firing raced with the idle one
	}
	d.ready.OnReadable(nil)
	d.conn.Close()
	d.p.udp.held.Add(-1)
	d.p.udp.heldShares.release(d.share)
}
