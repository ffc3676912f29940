package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// switchChecker is a DestinationCheck that vouches for every destination,
// or for none, as the test says.
type switchChecker struct{ pass atomic.Bool }

func (c *switchChecker) check(_ context.Context, _, name string, dest netip.Addr) error {
	if c.pass.Load() {
		return nil
	}
	return fmt.Errorf("%s is not an address of %s", dest, name)
}

// Under a strict allow-list that bumps the allowed name, with
// destination_check: dns, a ClientHello for the name sent to an address
// the name does not resolve to is refused before anything is dialled: the
// destination accepts no connection, and an open port and a closed one
// give the client the same access_denied alert, each recorded as a denial
// for the mismatch. Dialled before the check, the open port would have
// been reached, and answered with an alert where the closed one got a RST
// (recorded as a refused bump): a scan of the addresses the policy denies.
func TestNamedOnlyBumpCheckedBeforeDial(t *testing.T) {
	dc := new(switchChecker)
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "bump"), clsOptions{bump: true, check: dc.check})
	open, accepts := countingListener(t)
	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	for _, dest := range []netip.AddrPort{open, closed} {
		c := r.dial(t, dest)
		err := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: clsRoots(r)}).Handshake()
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("%v: handshake %v, want an access_denied alert", dest, err)
		}
		rec := r.record(t, c, "tls")
		if rec.Action != "deny" || rec.Result != "denied" || rec.DestCheck != "mismatch" || rec.Rule != "web" ||
			!strings.Contains(rec.Error, "is not an address of allowed.example") {
			t.Errorf("%v: record %+v, want denied by rule web for the mismatch", dest, rec)
		}
		c.Close()
	}
	time.Sleep(100 * time.Millisecond) // an accept in flight would land by now
	if n := accepts.Load(); n != 0 {
		t.Errorf("the destination the check denied accepted %d connections, want none", n)
	}
}

// A bump by name whose check passes is dialled then, and works end to
// end; one whose destination then refuses the dial resets the client, and
// its record keeps the bump's rule and says how the dial ended.
func TestNamedOnlyBumpDialledAfterCheck(t *testing.T) {
	dc := new(switchChecker)
	dc.pass.Store(true)
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "bump"), clsOptions{bump: true, check: dc.check})
	c := r.dial(t, r.tlsDest)
	tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: clsRoots(r), NextProtos: []string{"http/1.1"}})
	if body, err := clsGet(tc, "allowed.example"); err != nil || body != "hello host=allowed.example" {
		t.Fatalf("GET over the bump: %q, %v", body, err)
	}
	tc.Close()
	if rec := r.record(t, c, "tls"); rec.Action != "bump" || rec.Rule != "web" || rec.DestCheck != "ok" || rec.UpstreamVerify != "ok" {
		t.Errorf("record %+v, want a bump by rule web, checked and verified", rec)
	}

	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	c = r.dial(t, closed)
	if err := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: clsRoots(r)}).Handshake(); err == nil || !isReset(err) {
		t.Errorf("handshake to a closed port: %v, want a reset", err)
	}
	if rec := r.record(t, c, "tls"); rec.Result != "refused" || rec.Action != "bump" || rec.Rule != "web" || rec.DestCheck != "ok" || rec.Error == "" {
		t.Errorf("record %+v, want a bump by rule web, checked, its dial refused", rec)
	}
	for end := time.Now().Add(time.Second); r.p.Stats().TCPActive != 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := r.p.Stats().TCPActive; n != 0 {
		t.Errorf("%d TCP connections still active", n)
	}
}
