package proxy

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// brokenWatcher is a client connection that says when something arrives,
// tells a reset from a FIN, and a reset after a FIN from one before
// (netstack.Conn).
type brokenWatcher interface {
	OnReadable(fn func())
	BrokenAfterFIN() bool
	brokenReader
}

// clientWatch ends an intercepted session whose client's connection
// breaks: the client reset it, or vanished (its keepalives went
// unanswered). Nothing else would. While an HTTP/1 request is in flight
// nobody reads the client (goproxy reads the next request only once the
// response is written), and the upstream transports end an exchange only
// when the request's context does, which goproxy cancels only when its
// loop returns: a client that sent a request to an origin that never
// answers, or stops in the middle of the body with its connection open,
// and then reset, left the session waiting on the origin for good, with
// its host socket, goroutines and buffers, and no record. The watch
// costs no goroutine: the stack calls it when the client's connection
// has news, and it looks at the connection's state, not at its bytes
// (pipelined requests stay where goproxy reads them). A client's FIN
// alone is not a break: a client may half-close after its request and
// wait for the answer (HTTP/1.0 style); that session goes on.
type clientWatch struct {
	p     *Proxy
	is    *intercept.Session
	conn  brokenWatcher // nil: the client is not a netstack.Conn
	fired atomic.Bool
	// key is the client's, for its share of lingering connections;
	// release gives back the one the session holds (holdLinger), once
	// stopped. Under mu.
	key     shareKey
	mu      sync.Mutex
	release func()
	stopped bool
}

// watch starts watching is's client, when it is a netstack.Conn (under
// the classifier's wrapper): every client the stack hands over is one.
func (w *clientWatch) watch(p *Proxy, is *intercept.Session) {
	c := is.Client
	for {
		wc, ok := c.(wrappedConn)
		if !ok {
			break
		}
		c = wc.unwrap()
	}
	b, ok := c.(brokenWatcher)
	if !ok {
		return
	}
	w.p, w.is, w.conn = p, is, b
	b.OnReadable(w.check)
	w.check() // it may have broken before the callback was there
}

// check runs on the stack's packet path, or on the reader's goroutine in
// the Read that took the break, before that Read returns: it must not
// block, nor call the connection but for Broken. Whether a request is
// under way is taken here, as the break is first seen, before the HTTP/2
// server, reading the same reset, ends the streams: abort, which runs
// later, would find the session between requests.
func (w *clientWatch) check() {
	if !w.conn.Broken() {
		return
	}
	// Taken before fired: a check that loses the race for fired has
	// taken it too, before its Read returned (the first one stands).
	afterFIN := w.conn.BrokenAfterFIN()
	busy := w.is.NoteClientBreak(afterFIN)
	if !w.fired.CompareAndSwap(false, true) {
		return
	}
	go w.abort(busy, afterFIN)
}

// abort ends the session for the broken client: every connection is
// reset, which ends what waits on them, and the records of the
// connection and of the request under way say reset (timeout for
// keepalives gone unanswered). A session that has
// begun to end on its own is left to end so, and so is one whose client
// reset between requests (busy false: no request under way when the
// break came, NoteClientBreak): it loses nothing, as after a FIN. So is
// one whose client vanished after its FIN with nothing under way
// (afterFIN): a WebSocket tunnel whose client ended its side is over,
// and its destination must get the whole upload and the end of the
// stream, not a reset that throws away the tail its host socket still
// holds; the session ends once the tunnel has passed it all on, and its
// records say timeout all the same (Session.noteClientBreak).
func (w *clientWatch) abort(busy, afterFIN bool) {
	why := w.conn.BrokenError()
	w.is.ClientBreakTaken() // kept now, if the client's doing
	if why == nil {
		return // a clean close completing: a read's or a write's break is kept (netstack.Conn.ClientBroke)
	}
	// A break after the FIN is one only now (a clean close completing
	// looks alike on the packet path): a tunnel's waits end on it.
	w.is.ClientBroken()
	if w.p.stacksClosing.Load() && stackEnded(why) {
		// The stacks' close ended it: its abort's error, not a reset the
		// client sent just before (review rev32c F2), as endedError.
		w.is.Abort("reset", fmt.Errorf("%w: the client's connection: %w", errShutdown, why))
		return
	}
	if errors.Is(why, netstack.ErrMemoryReclaimed) {
		// The appliance reset it, not the client: said as it is.
		w.is.Abort("reset", why)
		return
	}
	// A reset, or keepalives gone unanswered (ETIMEDOUT): timeout then, as
	// a relayed flow's record says (relayResultOf).
	result, err := relayResultOf(why), fmt.Errorf("the client's connection broke: %w", why)
	if busy && result == "reset" {
		// A break that came as an HTTP/1 response's last bytes went out
		// is settled by their write: between requests if they went out.
		busy = w.is.ClientBreakUnderWay()
	}
	if !busy && (result == "reset" || afterFIN) {
		// A reset between requests, after the client's FIN
		// (ErrResetAfterFIN) or not, or a vanishing after the FIN: the
		// session loses nothing by it. A vanished client (timeout) is
		// said whenever it goes, by the records if not by this Abort.
		if afterFIN {
			if serr := w.holdLinger(); serr != nil {
				// Past the share: a tunnel's linger looks once (a tail
				// acknowledged already is delivered) and is cut short
				// else; a session that cannot look is cut at once.
				counted := func() {}
				if se, ok := errors.AsType[*lingerShareError](serr); ok {
					counted = se.counted
				}
				if w.is.CutLinger(serr, "reset", fmt.Errorf("the client's connection broke after its FIN (%w), and the upload's tail was not delivered: lingering: %w", why, serr), counted) {
					return
				}
			}
		}
		if !w.is.AbortUnlessIdle(result, err) && afterFIN {
			// A tunnel's write of the upload under way is bounded from
			// now, and cut by the stacks' close: nothing else ends it.
			w.is.BoundTunnelUpload()
		}
		return
	}
	w.is.Abort(result, err)
}

// holdLinger takes one of the client's lingering connections for the
// session, whose client broke after its FIN, until it is done: a WebSocket
// tunnel lingers then until its destination has the upload's tail
// (intercept's upgradedBody.closeDelivering), for up to a minute, while
// the client's flow-table entry is forgotten soon after its reset (the
// transitory timeout), giving its flow share back; any other session ends
// soon after. An error says the client held its share already: the
// session is to be cut short.
func (w *clientWatch) holdLinger() error {
	release, err := w.p.takeLinger(w.key)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		release() // done meanwhile
		return nil
	}
	w.release = release
	return nil
}

// stop ends the watch: the session is done. It gives back the session's
// lingering connection, if it held one.
func (w *clientWatch) stop() {
	if w.conn != nil {
		w.conn.OnReadable(nil)
	}
	w.mu.Lock()
	w.stopped = true
	release := w.release
	w.release = nil
	w.mu.Unlock()
	if release != nil {
		release()
	}
}
