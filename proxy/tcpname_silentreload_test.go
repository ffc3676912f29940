package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Policies a strict allow-list may be reloaded to that let TCP reach the
// rig's loopback destinations by their addresses, and still decide TLS and
// HTTP by name (review r2s29 F1).
const (
	// silentDenyList moves from an allow-list to a deny-list.
	silentDenyList = "policy:\n  default: allow\n  rules:\n    - name: block\n      domains: [denied.example]\n      action: deny\n"
	// silentBumpAll inspects everything.
	silentBumpAll = "policy:\n  default: bump\n"
	// silentTCPOnly allows the loopback addresses for TCP that is neither
	// TLS nor HTTP, next to a domain rule.
	silentTCPOnly = `
policy:
  default: deny
  rules:
    - name: web
      domains: [allowed.example]
      action: splice
    - name: lan-tcp
      protocols: [tcp]
      dest_cidrs: ["127.0.0.0/8"]
      action: allow
`
)

// silentAcrossReload connects a client to each of dests under the rig's
// policy, which only a name can open them under, and keeps it silent while
// the policy is reloaded to doc and until each connection's nameWait has
// ended under doc; it returns the clients' ends, still silent.
func silentAcrossReload(t *testing.T, r *clsRig, doc string, dests ...netip.AddrPort) []*net.TCPConn {
	t.Helper()
	var cs []*net.TCPConn
	for _, d := range dests {
		c := r.dial(t, d)
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	time.Sleep(nameWait / 3) // decided at the SYN, waiting for a first byte
	r.reloadPolicy(t, doc)
	time.Sleep(2 * nameWait) // each wait has ended, under doc
	for _, c := range cs {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return cs
}

// onlyRecord waits for c's record of kind, and fails t if c also has a
// tcp record: the flow is recorded as what it was, not as opaque bytes.
func onlyRecord(t *testing.T, r *clsRig, c net.Conn, kind string) {
	t.Helper()
	r.record(t, c, kind)
	port := c.LocalAddr().(*net.TCPAddr).AddrPort().Port()
	for _, rec := range r.recs.parse(t) {
		if rec.ClientPort == port && rec.Kind == "tcp" {
			t.Errorf("record %+v beside the %s one: the flow was recorded as opaque TCP", rec, kind)
		}
	}
}

// A client that stays silent on a connection only a name could open, until
// its nameWait ends under a reloaded policy that allows its destination's
// address for something, has its destination dialled and is then served as
// a connection dialled first is: the ClientHello or request it sends later
// is classified and decided by its name, as on a fresh connection, not
// relayed raw under a `tcp` allow. Before, a denied name went through, a
// `default: bump` was not bumped, and a `tcp`-only rule carried TLS, each
// recorded as one `tcp` allow.
func TestNamedOnlySilentClientReloadedToAllowStillClassified(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 300 * time.Millisecond
	strict := fmt.Sprintf(clsStrictAllowList, "splice")

	t.Run("control: a fresh connection under the tcp-only policy", func(t *testing.T) {
		r := newClsRig(t, silentTCPOnly, clsOptions{})
		c := r.dial(t, r.tlsDest)
		err := tls.Client(c, &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("handshake for denied.example: %v, want an access_denied alert", err)
		}
		if rec := r.record(t, c, "tls"); rec.Action != "deny" || rec.Rule != "default" || rec.SNI != "denied.example" {
			t.Errorf("record %+v, want tls denied.example denied by default", rec)
		}
	})

	t.Run("deny list", func(t *testing.T) {
		r := newClsRig(t, strict, clsOptions{})
		cs := silentAcrossReload(t, r, silentDenyList, r.tlsDest, r.plainDest, r.tlsDest)

		err := tls.Client(cs[0], &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("handshake for denied.example: %v, want an access_denied alert from rule block", err)
		}
		onlyRecord(t, r, cs[0], "tls")
		if rec := r.record(t, cs[0], "tls"); rec.Action != "deny" || rec.Rule != "block" || rec.SNI != "denied.example" {
			t.Errorf("record %+v, want tls denied.example denied by rule block", rec)
		}

		body, err := clsGet(cs[1], "denied.example")
		if err != nil || strings.Contains(body, "hello") {
			t.Errorf("HTTP for denied.example: %q, %v; want the 403 page", body, err)
		}
		onlyRecord(t, r, cs[1], "http")
		if rec := r.record(t, cs[1], "http"); rec.Action != "deny" || rec.Rule != "block" || rec.Status != 403 {
			t.Errorf("record %+v, want http denied by rule block with a 403", rec)
		}

		// A name the deny-list does not deny still works.
		tc := tls.Client(cs[2], &tls.Config{ServerName: "allowed.example", RootCAs: r.upRoots, NextProtos: []string{"http/1.1"}})
		if body, err := clsGet(tc, "allowed.example"); err != nil || body != "hello host=allowed.example" {
			t.Errorf("GET for allowed.example: %q, %v", body, err)
		}
		tc.Close()
		onlyRecord(t, r, cs[2], "tls")
		if rec := r.record(t, cs[2], "tls"); rec.Action == "deny" || rec.Rule != "default" || rec.SNI != "allowed.example" {
			t.Errorf("record %+v, want tls allowed.example let through by default", rec)
		}
	})

	t.Run("bump everything", func(t *testing.T) {
		r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "bump"), clsOptions{bump: true})
		cs := silentAcrossReload(t, r, silentBumpAll, r.tlsDest)
		// Trusting the appliance's CA only: relayed raw, the client would
		// see the origin's own certificate and fail.
		tc := tls.Client(cs[0], &tls.Config{ServerName: "denied.example", RootCAs: clsRoots(r), NextProtos: []string{"http/1.1"}})
		if body, err := clsGet(tc, "denied.example"); err != nil || body != "hello host=denied.example" {
			t.Errorf("GET over the bump: %q, %v; want it served through the appliance's certificate", body, err)
		}
		tc.Close()
		onlyRecord(t, r, cs[0], "tls")
		if rec := r.record(t, cs[0], "tls"); rec.Action != "bump" || rec.Rule != "default" || rec.SNI != "denied.example" {
			t.Errorf("record %+v, want tls denied.example bumped by default", rec)
		}
	})

	t.Run("tcp-only rule", func(t *testing.T) {
		r := newClsRig(t, strict, clsOptions{})
		cs := silentAcrossReload(t, r, silentTCPOnly, r.tlsDest, r.plainDest, r.tlsDest)

		err := tls.Client(cs[0], &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("handshake for denied.example: %v, want an access_denied alert: rule lan-tcp is not for TLS", err)
		}
		onlyRecord(t, r, cs[0], "tls")
		if rec := r.record(t, cs[0], "tls"); rec.Action != "deny" || rec.Rule != "default" || rec.SNI != "denied.example" {
			t.Errorf("record %+v, want tls denied.example denied by default", rec)
		}

		body, err := clsGet(cs[1], "denied.example")
		if err != nil || strings.Contains(body, "hello") {
			t.Errorf("HTTP for denied.example: %q, %v; want the 403 page", body, err)
		}
		onlyRecord(t, r, cs[1], "http")
		if rec := r.record(t, cs[1], "http"); rec.Action != "deny" || rec.Rule != "default" || rec.Status != 403 {
			t.Errorf("record %+v, want http denied by default with a 403", rec)
		}

		tc := tls.Client(cs[2], &tls.Config{ServerName: "allowed.example", RootCAs: r.upRoots, NextProtos: []string{"http/1.1"}})
		if body, err := clsGet(tc, "allowed.example"); err != nil || body != "hello host=allowed.example" {
			t.Errorf("GET for allowed.example: %q, %v", body, err)
		}
		tc.Close()
		onlyRecord(t, r, cs[2], "tls")
		if rec := r.record(t, cs[2], "tls"); rec.Action != "splice" || rec.Rule != "web" {
			t.Errorf("record %+v, want tls allowed.example spliced by rule web", rec)
		}
	})

	t.Run("reloaded again before its first bytes", func(t *testing.T) {
		// Handed over, the connection waits for its first bytes as one
		// dialled first does, and they are decided under the policy in
		// force when they come: here the strict allow-list once more.
		r := newClsRig(t, strict, clsOptions{})
		cs := silentAcrossReload(t, r, silentTCPOnly, r.tlsDest)
		r.reloadPolicy(t, strict)
		err := tls.Client(cs[0], &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("handshake for denied.example: %v, want an access_denied alert", err)
		}
		onlyRecord(t, r, cs[0], "tls")
		if rec := r.record(t, cs[0], "tls"); rec.Action != "deny" || rec.Rule != "internal" || rec.Policy != r.p.cfg.Policy.Load().ID() {
			t.Errorf("record %+v, want tls denied by the policy reloaded last, rule internal", rec)
		}
	})
}

// waitingHeld is how many slots of the waiting share all clients hold.
func waitingHeld(r *clsRig) int {
	w := &r.p.tcp.waiting
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, e := range w.m {
		n += e.flows
	}
	return n
}

// A silent connection handed over to the dialled-first path keeps its slot
// in its client's waiting share until its first bytes come, as a
// connection dialled first does, and gives it back once, then: with a
// share of 1, the client's next connection meanwhile is refused, and once
// the first has sent its ClientHello the next is admitted. Before, the
// slot went back at the dial, and the client could hold any number of
// dialled connections open, silent, past its share.
func TestNamedOnlySilentClientReloadedToAllowKeepsWaitingSlot(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 300 * time.Millisecond
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	r.p.cfg.MaxWaitingTCPPerClient = 1
	c := silentAcrossReload(t, r, silentDenyList, r.tlsDest)[0]
	if n := waitingHeld(r); n != 1 {
		t.Errorf("after the wait: %d waiting slots held, want 1, the silent connection's", n)
	}

	d := r.dial(t, r.plainDest)
	d.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := d.Read(make([]byte, 1)); err == nil || !isReset(err) {
		t.Errorf("a second connection while the first is silent: read %v, want a reset", err)
	}
	if n := r.p.Stats().TCPWaitingDrops; n != 1 {
		t.Errorf("tcp_waiting_drops %d, want 1", n)
	}

	tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: r.upRoots, NextProtos: []string{"http/1.1"}})
	if body, err := clsGet(tc, "allowed.example"); err != nil || body != "hello host=allowed.example" {
		t.Errorf("GET for allowed.example: %q, %v", body, err)
	}
	if n := waitingHeld(r); n != 0 {
		t.Errorf("once classified: %d waiting slots held, want 0", n)
	}
	e := r.dial(t, r.plainDest)
	if body, err := clsGet(e, "allowed.example"); err != nil || !strings.Contains(body, "hello host=allowed.example") {
		t.Errorf("the next connection once the first was classified: %q, %v", body, err)
	}
	tc.Close()
	if n := r.p.Stats().TCPWaitingDrops; n != 1 {
		t.Errorf("tcp_waiting_drops %d, want still 1", n)
	}
	if n := waitingHeld(r); n != 0 {
		t.Errorf("at the end: %d waiting slots held, want 0", n)
	}
}

// A handed-over connection whose dial fails is reset, recorded with how the
// dial ended and counted in tcp_dial_errors, and its waiting slot is given
// back, once.
func TestNamedOnlySilentClientReloadedToAllowDialFails(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 300 * time.Millisecond
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	c := silentAcrossReload(t, r, silentDenyList, closed)[0]
	if _, err := c.Read(make([]byte, 1)); err == nil || !isReset(err) {
		t.Errorf("read %v, want a reset", err)
	}
	if rec := r.record(t, c, "tcp"); rec.Result != "refused" || rec.Error == "" {
		t.Errorf("record %+v, want result refused with the dial's error", rec)
	}
	if n := r.p.Stats().TCPDialErrors; n != 1 {
		t.Errorf("tcp_dial_errors %d, want 1", n)
	}
	if n := waitingHeld(r); n != 0 {
		t.Errorf("%d waiting slots held, want 0", n)
	}
}

// The handed-over connection gives its waiting slot back exactly once,
// whether its dial fails, its name is refused or it is served: a second
// silent connection of the same client, dialled first under the reloaded
// policy, holds a slot throughout, so a second release would show as none
// held (with one connection only, the client's entry goes at its first
// release and a second leaves no trace; found by review r5s29 F1).
func TestNamedOnlySilentClientHandoverReleasesSlotOnce(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 300 * time.Millisecond
	for _, end := range []string{"dial fails", "name refused", "served"} {
		t.Run(end, func(t *testing.T) {
			r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
			dest := r.tlsDest
			if end == "dial fails" {
				ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
				dest = ln.Addr().(*net.TCPAddr).AddrPort()
				ln.Close()
			}
			c := r.dial(t, dest)
			t.Cleanup(func() { c.Close() })
			time.Sleep(nameWait / 3)
			r.reloadPolicy(t, silentDenyList)
			x := r.dial(t, r.plainDest) // dialled first, silent: one slot
			t.Cleanup(func() { x.Close() })
			time.Sleep(2 * nameWait) // c's wait has ended, handed over
			want := 2
			if end == "dial fails" {
				want = 1
			}
			if n := waitingHeld(r); n != want {
				t.Errorf("after the handover: %d waiting slots held, want %d", n, want)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			switch end {
			case "dial fails":
				if _, err := c.Read(make([]byte, 1)); err == nil || !isReset(err) {
					t.Errorf("read %v, want a reset", err)
				}
				r.record(t, c, "tcp")
			case "name refused":
				err := tls.Client(c, &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
				if err == nil || !strings.Contains(err.Error(), "access denied") {
					t.Errorf("handshake for denied.example: %v, want access denied", err)
				}
				r.record(t, c, "tls")
			case "served":
				tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: r.upRoots, NextProtos: []string{"http/1.1"}})
				if body, err := clsGet(tc, "allowed.example"); err != nil || body != "hello host=allowed.example" {
					t.Errorf("GET for allowed.example: %q, %v", body, err)
				}
				tc.Close()
				r.record(t, c, "tls")
			}
			if n := waitingHeld(r); n != 1 {
				t.Errorf("%d waiting slots held, want 1: the silent second connection's", n)
			}
		})
	}
}
