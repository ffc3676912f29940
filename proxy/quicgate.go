package proxy

import (
	"os"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// gateReader reads the client's datagrams for the QUIC gate. A flow waiting
// there for the rest of its ClientHello holds what it was sent and nothing
// more: with readiness (readableConn) it waits for an announcement holding
// no buffer, and takes a pooled one only to read a datagram waiting, which
// it copies out at its own size. A client may keep
// --max-udp-flows-per-client flows at the gate, so a 64 KiB read buffer
// each, held through the wait, would let it pin 64 MiB and more.
type gateReader struct {
	f     *udpFlow
	wake  chan struct{} // a datagram arrived to an empty queue, or the conn closed
	timer *time.Timer
}

// gateReader returns the flow's gate reader; stop it once the gate is done.
func (f *udpFlow) gateReader() *gateReader {
	g := &gateReader{f: f}
	if f.ready != nil {
		g.wake = make(chan struct{}, 1)
		f.ready.OnReadable(g.announced)
	}
	return g
}

// announced is OnReadable's function: it runs on the packet path and must
// not block.
func (g *gateReader) announced() {
	select {
	case g.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// stop ends the announcements. What comes after the gate (the relay, a
// denied flow's hold) arranges its own, and reads what waits already.
func (g *gateReader) stop() {
	if g.f.ready != nil {
		g.f.ready.OnReadable(nil)
	}
	if g.timer != nil {
		g.timer.Stop()
	}
}

// read returns a copy of the client's next datagram, waiting until
// deadline at most (then an error wrapping os.ErrDeadlineExceeded). A
// datagram longer than limit is returned as limit+1 bytes: the gate only
// needs to know it is over its bound.
func (g *gateReader) read(deadline time.Time, limit int) ([]byte, error) {
	if g.f.ready == nil {
		return g.readBlocking(deadline, limit)
	}
	for {
		bufp := datagramBufPool.Get().(*[]byte)
		n, err := g.f.ready.TryRead(*bufp)
		var d []byte
		if err == nil {
			d = append([]byte(nil), (*bufp)[:min(n, limit+1)]...)
		}
		datagramBufPool.Put(bufp)
		if err != netstack.ErrWouldBlock {
			return d, err
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, os.ErrDeadlineExceeded
		}
		if g.timer == nil {
			g.timer = time.NewTimer(wait)
		} else {
			g.timer.Reset(wait)
		}
		// A wake-up left over, or the timer of an earlier wait, only
		// sends the loop round once more: the deadline is looked at
		// afresh.
		select {
		case <-g.wake:
			g.timer.Stop()
		case <-g.timer.C:
		}
	}
}

// readBlocking is read for a client conn that cannot announce its
// datagrams: it waits in Read, on a pooled buffer.
func (g *gateReader) readBlocking(deadline time.Time, limit int) ([]byte, error) {
	_ = g.f.client.SetReadDeadline(deadline)
	defer func() { _ = g.f.client.SetReadDeadline(time.Time{}) }()
	bufp := datagramBufPool.Get().(*[]byte)
	defer datagramBufPool.Put(bufp)
	n, err := g.f.client.Read(*bufp)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), (*bufp)[:min(n, limit+1)]...), nil
}
