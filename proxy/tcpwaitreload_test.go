package proxy

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// silentServer is a destination that accepts and waits for its client to
// speak (PostgreSQL does): accepted says a connection came, closed when
// the appliance closed it.
func silentServer(t *testing.T) (dest netip.AddrPort, accepted, closed chan struct{}) {
	accepted, closed = make(chan struct{}, 8), make(chan struct{}, 8)
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) {
		accepted <- struct{}{}
		c.Read(make([]byte, 1))
		closed <- struct{}{}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort(), accepted, closed
}

// waitListed waits until n connections wait for their first bytes on the
// list a reload looks at.
func waitListed(t *testing.T, p *Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ws := &p.tcp.waiters
		ws.mu.Lock()
		got := 0
		for w := ws.head; w != nil; w = w.waiter.next {
			got++
		}
		ws.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections listed as waiting, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func receive(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(3 * time.Second):
		t.Fatalf("%s: not within 3 s", what)
	}
}

// TestWaitingDialledFirstRefusedOnReloadDeny: a connection dialled first,
// whose client sends nothing, is refused when a reload denies its
// addresses outright, not only once its client speaks: its destination's
// connection closed, its client reset, its waiting slot given back, and a
// deny record naming the new rule and policy. Before, the destination's
// connection (a database's slot) stayed open for as long as the client
// stayed silent, and there was no record.
func TestWaitingDialledFirstRefusedOnReloadDeny(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	dest, accepted, closed := silentServer(t)
	c := r.dial(t, dest)
	defer c.Close()
	receive(t, accepted, "the destination's connection")
	waitListed(t, r.p, 1)

	r.reloadPolicy(t, noLoopbackTCP)
	receive(t, closed, "the destination's connection closed after a reload that denies its address")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || !isReset(err) {
		t.Errorf("the client's read: %v, want a reset", err)
	}
	rec := r.record(t, c, "tcp")
	if rec.Action != "deny" || rec.Rule != "no-loopback" || rec.Policy != r.p.cfg.Policy.Load().ID() ||
		rec.Result != "denied" || rec.Error != errWaitingDenied || rec.BytesOut != 0 || rec.BytesIn != 0 {
		t.Errorf("record %+v; want tcp denied by no-loopback of the new policy, nothing relayed", rec)
	}
	waitNoWaitingSlots(t, r.p, "after the refusal")
	waitListed(t, r.p, 0)
}

// TestWaitingDialledFirstWakeClassifiesNothing: a wake that the policy in
// force does not bear out (a reload that denied the addresses, undone by
// the next before the connection looked) decides nothing: the silent
// client waits on, its destination's connection open, and the ClientHello
// it sends later is classified and decided by its name, never relayed as
// tcp because the wake ended a wait for bytes (review r2s29 F1's bug).
func TestWaitingDialledFirstWakeClassifiesNothing(t *testing.T) {
	for _, how := range []string{"woken under a policy that allows", "reloads: deny, then allow, before the look"} {
		t.Run(how, func(t *testing.T) {
			r := newClsRig(t, silentDenyList, clsOptions{})
			c := r.dial(t, r.tlsDest)
			defer c.Close()
			waitListed(t, r.p, 1)
			ws := &r.p.tcp.waiters
			if how != "woken under a policy that allows" {
				// The reloads' look waits until both are in: the wake
				// below is the one the first would have made.
				ws.sweepMu.Lock()
				r.reloadPolicy(t, noLoopbackTCP)
				r.reloadPolicy(t, silentDenyList)
			}
			ws.mu.Lock()
			for w := ws.head; w != nil; w = w.waiter.next {
				w.wake()
			}
			ws.mu.Unlock()
			if how != "woken under a policy that allows" {
				ws.sweepMu.Unlock()
			}
			time.Sleep(200 * time.Millisecond) // the wake has been looked at
			waitListed(t, r.p, 1)              // waiting still

			err := tls.Client(c, &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
			if err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Errorf("handshake for denied.example: %v, want an access_denied alert from rule block", err)
			}
			onlyRecord(t, r, c, "tls")
			if rec := r.record(t, c, "tls"); rec.Action != "deny" || rec.Rule != "block" || rec.SNI != "denied.example" {
				t.Errorf("record %+v, want tls denied.example denied by rule block", rec)
			}
		})
	}
}

// reloadingAcceptor stores a policy as the client's handshake completes:
// after the connection's policy was loaded and its destination dialled,
// before it waits for its first bytes.
type reloadingAcceptor struct {
	clsAcceptor
	reload func()
}

func (a *reloadingAcceptor) Accept() (net.Conn, error) {
	a.reload()
	return a.clsAcceptor.Accept()
}

// TestWaitingDialledFirstReloadBeforeListed: a reload that lands after the
// connection loaded its policy but before it is listed among the waiting
// ones, where the reload's look may miss it, is seen by the connection
// itself: refused all the same. The look is held off here, so only the
// connection's own can refuse it.
func TestWaitingDialledFirstReloadBeforeListed(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	dest, accepted, closed := silentServer(t)
	ws := &r.p.tcp.waiters
	ws.sweepMu.Lock()
	held := true
	defer func() {
		if held {
			ws.sweepMu.Unlock()
		}
	}()
	client, proxySide := testnet.TCPPair(t)
	defer client.Close()
	flow := netstack.FlowInfo{Endpoint: 1, Client: client.LocalAddr().(*net.TCPAddr).AddrPort(), Dest: dest}
	client.SetDeadline(time.Now().Add(10 * time.Second))
	go r.p.handleTCP(flow, &reloadingAcceptor{clsAcceptor{conn: proxySide}, func() { r.reloadPolicy(t, noLoopbackTCP) }})
	receive(t, accepted, "the destination's connection")
	receive(t, closed, "the destination's connection closed after a reload that denies its address")
	ws.sweepMu.Unlock()
	held = false
	rec := r.record(t, client, "tcp")
	if rec.Action != "deny" || rec.Rule != "no-loopback" || rec.Error != errWaitingDenied {
		t.Errorf("record %+v; want tcp denied by no-loopback", rec)
	}
}

// TestWaitingListAllocatesNothing: listing a connection dialled first
// among the waiting ones, and taking it off, is on every such connection's
// path and allocates nothing.
func TestWaitingListAllocatesNothing(t *testing.T) {
	var ws tcpWaiters
	var subj policy.Subject
	w, other := new(serverFirstWatch), new(serverFirstWatch)
	ws.add(other, &subj)
	if n := testing.AllocsPerRun(1000, func() {
		ws.add(w, &subj)
		ws.remove(w)
	}); n != 0 {
		t.Errorf("%v allocations to list and unlist a waiting connection, want 0", n)
	}
	ws.remove(other)
	if ws.head != nil {
		t.Errorf("the list is not empty once every connection left it")
	}
}
