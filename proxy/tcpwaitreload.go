package proxy

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// A connection dialled first waits for its client's first bytes with no
// time limit (tcpSession.serve), its destination's connection open: a
// database's connection slot, say, held for as long as the client stays
// silent. Its first bytes are decided under the policy in force when they
// come (policyAtFirstBytes), but a reload that denies its addresses
// outright would otherwise reach it only then, so a client could keep
// such slots, and its own waiting share, past the reload that was meant
// to cut it off. So each reload looks at the connections waiting so
// (tcpWaiters.sweep): one whose addresses alone the new policy denies
// (DecideEarly) has its wait woken, is decided again on its addresses
// under the policy then in force, and refused as a new connection to them
// would be (its client reset, its destination's connection closed, a deny
// record naming the new rule). One that only a name could now let through
// (OnlyNameAllows: a lock-down to an allow-list of names, whose domain
// rules keep DecideEarly from denying) is woken too, and goes on as a new
// connection would under that policy: its destination's connection
// closed, it waits nameWait for a name with nothing dialled
// (awaitNameAfterReload). Nothing else is decided on the wake: a silent
// client is never classified as tcp because a reload woke it (that would
// relay, unread, the ClientHello it sends later), and one whose addresses
// are still allowed, by something other than a name, waits on. The list costs each connection
// dialled first two short critical sections and no allocation. A reload
// costs, on a goroutine of its own, one DecideEarly (and OnlyNameAllows)
// per distinct subject waiting (one client's connections to one destination share one), run
// with the list's lock released: the lock is held only to copy the list
// out, so a reload under a policy of many rules does not stall every new
// connection, and every waiting one whose first bytes come, for as long
// as the decisions take.

// tcpWaiter is a waiting connection's place in tcpWaiters.
type tcpWaiter struct {
	prev, next *serverFirstWatch
	listed     bool
	subj       *policy.Subject // the session's: unchanged while it waits
}

// tcpWaiters lists the connections dialled first that wait for their
// client's first bytes.
type tcpWaiters struct {
	mu   sync.Mutex
	head *serverFirstWatch
	n    int // how many are listed: what a sweep copies out
	// pending says a sweep is started and has not loaded the policy yet:
	// a reload meanwhile needs no sweep of its own. sweepMu runs sweeps
	// one at a time.
	pending atomic.Bool
	sweepMu sync.Mutex
}

// add lists w, waiting for the first bytes of the connection subj.
func (ws *tcpWaiters) add(w *serverFirstWatch, subj *policy.Subject) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w.waiter = tcpWaiter{next: ws.head, listed: true, subj: subj}
	if ws.head != nil {
		ws.head.waiter.prev = w
	}
	ws.head = w
	ws.n++
}

// remove takes w off the list: its wait is over.
func (ws *tcpWaiters) remove(w *serverFirstWatch) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if !w.waiter.listed {
		return
	}
	prev, next := w.waiter.prev, w.waiter.next
	if prev != nil {
		prev.waiter.next = next
	} else {
		ws.head = next
	}
	if next != nil {
		next.waiter.prev = prev
	}
	w.waiter = tcpWaiter{}
	ws.n--
}

// policyChanged is the policy's OnChange function: it runs under the
// holder's lock and must be quick, so the sweep runs on a goroutine of its
// own, one per burst of reloads.
func (p *Proxy) policyChanged() {
	if !p.tcp.waiters.pending.Swap(true) {
		go p.tcp.waiters.sweep(p.cfg.Policy)
	}
}

// sweep wakes the waiting connections whose addresses alone the policy in
// force denies, or that only a name could now let through.
func (ws *tcpWaiters) sweep(h *policy.Holder) {
	ws.sweepMu.Lock()
	defer ws.sweepMu.Unlock()
	ws.pending.Store(false) // first: a reload after it starts another sweep
	pol := h.Load()
	ws.wakeWhere(func(subj policy.Subject) bool {
		_, deny := pol.DecideEarly(subj)
		return deny || pol.OnlyNameAllows(subj)
	})
}

// sweptWaiter is a waiting connection as a sweep copied it out of the
// list: its subject copied too, since once the connection leaves the list
// its session goes on to fill in the protocol and name.
type sweptWaiter struct {
	w    *serverFirstWatch
	subj policy.Subject
}

// wakeWhere wakes the listed connections whose subject denies says to.
// The list's lock is held only while the list is copied out: deny and the
// wakes run without it, so connections are listed and unlisted meanwhile.
// A connection whose wait ended after the copy is not harmed by its wake:
// wake does nothing once the sniffer's watch has stopped, and one that
// lands between the sniffer's last look (takeWake) and stop only sets a
// read deadline that stop clears, the first bytes then being decided
// under the policy in force (policyAtFirstBytes). One listed after the
// copy checks the policy itself (tcpSession.serve).
func (ws *tcpWaiters) wakeWhere(deny func(policy.Subject) bool) {
	ws.mu.Lock()
	n := ws.n
	ws.mu.Unlock()
	listed := make([]sweptWaiter, 0, n+n/8+1) // allocated without the lock
	ws.mu.Lock()
	for w := ws.head; w != nil; w = w.waiter.next {
		listed = append(listed, sweptWaiter{w: w, subj: *w.waiter.subj})
	}
	ws.mu.Unlock()
	decided := make(map[policy.Subject]bool)
	for i := range listed {
		l := &listed[i]
		denied, ok := decided[l.subj]
		if !ok {
			denied = deny(l.subj)
			decided[l.subj] = denied
		}
		if denied {
			l.w.wake()
		}
	}
}

// waitVerdict is what a reload's wake of a waiting connection comes to.
type waitVerdict int

const (
	waitOn     waitVerdict = iota // its addresses may still pass: it waits on
	waitDenied                    // its addresses alone are denied: refused
	waitNamed                     // only a name could let it through now
)

// decideWoken decides a connection whose wait a reload woke, on its
// addresses alone, under the policy in force now (a later reload may have
// allowed them again). A deny is recorded with its rule and policy, and
// the caller refuses the connection; one only a name could now let
// through goes on as awaitNameAfterReload says.
func (s *tcpSession) decideWoken() waitVerdict {
	pol := s.p.cfg.Policy.Load()
	if d, deny := pol.DecideEarly(s.subj); deny {
		s.pol = pol
		s.rec.Rule, s.rec.Policy = d.Rule, d.Policy
		return waitDenied
	}
	if pol.OnlyNameAllows(s.subj) {
		s.pol = pol
		return waitNamed
	}
	return waitOn
}

// awaitNameAfterReload goes on with a connection, dialled first, whose
// wait a reload woke and under which only a name could let it through (an
// allow-list of names, say): as a new connection would be under it, it
// is served with nothing dialled (serveNamed). Its destination's
// connection is closed, and anything the destination sent since the
// watch was last looked at is dropped with it, since a flow to that
// destination no name has allowed must not reach it, nor hear from it.
// The connection keeps the slot in its client's waiting share that it
// took when it came, and waits for a name for nameWait: a silent client
// is refused then, never classified as tcp, and one whose first bytes
// name what the policy allows has its destination dialled again
// (dialAllowed). Bytes it sent before the wake stay buffered in br.
// It reports whether the connection is to be served dialled first again
// (awaitName).
func (s *tcpSession) awaitNameAfterReload(accepted net.Conn, br *bufio.Reader, stop func() ([]byte, error)) bool {
	_, _ = stop()
	s.up.Close()
	s.up = nil
	s.holding = true // released as a flow only a name could let through releases it
	return s.awaitName(accepted, br, "so the reload closed its connection there")
}

// errWaitingDenied is the record's error for a waiting connection a reload
// denied: nothing of it was relayed, but its destination was dialled under
// the policy before, as for a relayed flow a reload ends.
const errWaitingDenied = "ended by a policy reload: denied by policy, while the connection waited for its client's first bytes"
