package proxy

import (
	"net"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// maxDeniedUDP bounds the denied UDP flows held open (a few KiB each, the
// stack's endpoint included). Beyond it a denied flow is closed at once,
// and each further datagram of it is decided, and recorded, again.
const maxDeniedUDP = 1 << 14

// deniedUDP is a denied flow kept open without a host socket, its
// datagrams discarded, until it idles: a client that keeps sending (a QUIC
// client retransmitting its Initial, a flood) gives one deny record, not
// one per datagram. A reload lets it be decided again on its next datagram;
// a forbidden destination (pol nil) stays refused.
type deniedUDP struct {
	p       *Proxy
	conn    net.Conn
	ready   readableConn
	pol     *policy.Policy
	last    atomic.Int64 // when a datagram last came (monoNow)
	timer   *time.Timer
	closing atomic.Bool // ending: the timer fires at once
	closed  atomic.Bool
	scratch [1]byte // what a datagram is read into to discard it
}

// holdDenied keeps a denied flow's client end open, or closes it when that
// cannot be done cheaply (a conn that cannot announce its datagrams) or too
// many are held.
func (p *Proxy) holdDenied(conn net.Conn, ready readableConn, pol *policy.Policy) {
	if ready == nil || p.udp.held.Add(1) > maxDeniedUDP {
		if ready != nil {
			p.udp.held.Add(-1)
		}
		conn.Close()
		return
	}
	d := &deniedUDP{p: p, conn: conn, ready: ready, pol: pol}
	d.last.Store(monoNow())
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
		d.last.Store(monoNow())
	}
	if d.pol != nil && d.p.cfg.Policy.Load() != d.pol {
		d.closeSoon()
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
}
