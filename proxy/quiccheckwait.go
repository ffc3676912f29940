package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// A QUIC flow that its ClientHello's name lets through waits for its
// destination check (destcheck.go) before its host socket is opened: as
// long as a lookup takes, up to --dial-timeout, and a client that controls
// the authoritative servers of a name it may reach chooses how long. The
// client goes on sending meanwhile (retransmissions, 0-RTT, or a flood),
// and unread, its datagrams would wait in the stack's queue for the flow:
// gVisor's UDP endpoint refuses a datagram only once the payload bytes
// queued reach its receive buffer, so zero-length datagrams, about 700 B
// of heap each there, queued without bound, and even 1-byte ones by the
// hundred thousand. So the flow is read while its check waits, as the gate
// reads it while it waits for the ClientHello: what comes is held, up to
// checkWaitDatagrams and checkWaitBytes, each datagram charged
// checkWaitCost besides its bytes, and the rest is dropped and counted
// (udp_check_drops). The ClientHello's datagrams, held at the gate, are
// kept whatever comes: the connection works once its check passes, as its
// client retransmits what was dropped.
const (
	// checkWaitDatagrams bounds the datagrams held while the check waits:
	// a client that has sent its first flight sends little more before
	// the server answers, its retransmissions (one or two datagrams a
	// probe timeout) and perhaps some 0-RTT packets.
	checkWaitDatagrams = quicGateDatagrams
	// checkWaitBytes bounds their bytes, with checkWaitCost each, as the
	// gate bounds its own: a flow holds at most twice the gate's bound
	// before it is decided.
	checkWaitBytes = quicGateBytes
	// checkWaitCost is what holding a datagram costs besides its bytes:
	// its slice in the list and its allocation's rounding up. A
	// zero-length datagram costs this and nothing more.
	checkWaitCost = 64
)

// checkHolding runs the destination check for the QUIC flow's decision d,
// made on name, if one applies, and reads the client meanwhile (checkWait).
// It returns held, the ClientHello's datagrams, with those held during the
// check after them; whether the flow must be denied (checkDestination's
// answer); and an error wrapping errClientGone if the client's side closed
// or failed while the check waited.
func (f *udpFlow) checkHolding(d policy.Decision, name string, held [][]byte) ([][]byte, bool, error) {
	if !f.p.destCheckApplies(f.pol, d, name) {
		return held, false, nil // nothing waits: the relay reads what came
	}
	w := f.startCheckWait()
	deny := f.p.checkDestination(context.Background(), f.pol, d, f.rec, &f.vouch, name, f.info.Dest.Addr())
	more, err := w.stop()
	if err != nil {
		return held, deny, fmt.Errorf("%w: %w", errClientGone, err)
	}
	return append(held, more...), deny, nil
}

// checkWait reads a flow's client while its destination check waits. It
// reads on the packet path, as the relay does (clientReadable): no
// goroutine and no buffer wait with it. A client conn that cannot announce
// its datagrams (not from netstack) is not read: what it queues is bounded
// by its own buffer.
type checkWait struct {
	f *udpFlow
	// mu lets one drain run at a time: the stack may announce datagrams
	// from several goroutines at once. One that finds it taken leaves
	// pending for the drainer.
	mu      sync.Mutex
	pending atomic.Bool
	held    [][]byte // under mu
	cost    int      // what held is charged: its bytes, checkWaitCost each
	stopped bool     // the check is over: nothing more is read here
	err     error    // a read failed: the client's side closed or failed
	closed  bool     // reads fail for good: nothing more is read here
}

// startCheckWait starts reading the client; stop ends it.
func (f *udpFlow) startCheckWait() *checkWait {
	w := &checkWait{f: f}
	if f.ready != nil {
		f.ready.OnReadable(w.announced)
		w.announced() // what came since the gate stopped reading: never announced
	}
	return w
}

// announced is OnReadable's function: it runs on the packet path and must
// not block.
func (w *checkWait) announced() {
	w.pending.Store(true)
	for w.pending.Load() && w.mu.TryLock() {
		w.pending.Store(false)
		w.drain()
		w.mu.Unlock()
	}
}

// drain reads every waiting datagram, holding it within the bounds or
// dropping it. Under mu.
//
// A read error (the client's own ICMP port unreachable, which gVisor
// returns to one read and leaves the endpoint open) ends the flow once
// the check is over, but not the reading: unread, what the client sends
// after it would queue without bound for the rest of the check, as before
// there was this reading. So what comes after it is read and dropped; only
// a closed conn, or an error twice in a row, stops the reading.
func (w *checkWait) drain() {
	if w.stopped || w.closed {
		return
	}
	bufp := datagramBufPool.Get().(*[]byte)
	defer datagramBufPool.Put(bufp)
	failed := false // the last read failed
	for {
		n, err := w.f.ready.TryRead(*bufp)
		if err == netstack.ErrWouldBlock {
			return
		}
		if err != nil {
			if w.err == nil {
				w.err = err
			}
			if failed || errors.Is(err, net.ErrClosed) {
				w.closed = true
				return
			}
			failed = true
			continue
		}
		failed = false
		if w.err != nil || len(w.held) >= checkWaitDatagrams || w.cost+n+checkWaitCost > checkWaitBytes {
			w.f.p.udp.checkDrops.Add(1) // the flow ends after a read error: nothing more is held
			continue
		}
		w.cost += n + checkWaitCost
		w.held = append(w.held, append([]byte(nil), (*bufp)[:n]...))
	}
}

// stop ends the reading, once a drain under way is done, and returns what
// was held, in the order it came, and the read error, if one ended the
// reading. What comes after is the relay's to read (it reads what waits
// when it starts), or the denied flow's hold's.
func (w *checkWait) stop() ([][]byte, error) {
	if w.f.ready != nil {
		w.f.ready.OnReadable(nil)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	return w.held, w.err
}
