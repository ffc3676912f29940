package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hangingDest is a loopback destination whose dials hang until they time
// out: a listener with a backlog of 0 that never accepts, its queue
// filled, so that further SYNs are dropped.
func hangingDest(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	dest := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*syscall.SockaddrInet4).Port))
	for range 3 {
		if c, err := net.DialTimeout("tcp", dest.String(), 300*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return dest
}

// A bump by name keeps its client's waiting slot through its destination
// check and dial, which the interceptor runs: with a waiting share of 1,
// while one such dial hangs, the client's next connections are refused
// (tcp_waiting_drops), as they would be while a dial-first flow's dial
// hangs. Given back at the hand-over, before the check and the dial, a
// client could have as many of them under way at once as its flow-table
// share allows, whatever its waiting share.
func TestNamedOnlyBumpHoldsWaitingSlotThroughDial(t *testing.T) {
	dc := new(switchChecker)
	dc.pass.Store(true)
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "bump"), clsOptions{bump: true, check: dc.check})
	r.p.cfg.MaxWaitingTCPPerClient = 1
	dest := hangingDest(t)
	for i := range 3 {
		c := r.dial(t, dest)
		defer c.Close()
		go tls.Client(c, &tls.Config{ServerName: "allowed.example", InsecureSkipVerify: true}).Handshake()
		time.Sleep(300 * time.Millisecond) // the first one's dial is under way by now
		t.Logf("after connection %d: tcp_waiting_drops %d, tcp_active %d", i, r.p.Stats().TCPWaitingDrops, r.p.Stats().TCPActive)
	}
	if s := r.p.Stats(); s.TCPWaitingDrops != 2 || s.TCPActive != 1 {
		t.Errorf("tcp_waiting_drops %d, tcp_active %d; want 2 and 1: one dial under way at once with a waiting share of 1",
			s.TCPWaitingDrops, s.TCPActive)
	}
}

// A bump by name gives its waiting slot back on every way it ends before
// or at its dial: refused for a destination check mismatch, its dial
// refused; with a waiting share of 1, each next connection of the client
// is admitted, and the last one, checked and dialled, works.
func TestNamedOnlyBumpReleasesWaitingSlot(t *testing.T) {
	dc := new(switchChecker)
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "bump"), clsOptions{bump: true, check: dc.check})
	r.p.cfg.MaxWaitingTCPPerClient = 1

	c := r.dial(t, r.tlsDest)
	err := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: clsRoots(r)}).Handshake()
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("mismatch: handshake %v, want an access_denied alert", err)
	}
	if rec := r.record(t, c, "tls"); rec.Result != "denied" || rec.DestCheck != "mismatch" {
		t.Errorf("mismatch: record %+v, want denied for the mismatch", rec)
	}
	c.Close()

	dc.pass.Store(true)
	ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	c = r.dial(t, closed)
	if err := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: clsRoots(r)}).Handshake(); err == nil || !isReset(err) {
		t.Errorf("closed port: handshake %v, want a reset", err)
	}
	if rec := r.record(t, c, "tls"); rec.Result != "refused" || rec.DestCheck != "ok" {
		t.Errorf("closed port: record %+v, want checked, its dial refused", rec)
	}
	c.Close()

	c = r.dial(t, r.tlsDest)
	tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: clsRoots(r), NextProtos: []string{"http/1.1"}})
	if body, err := clsGet(tc, "allowed.example"); err != nil || body != "hello host=allowed.example" {
		t.Errorf("GET over the bump: %q, %v", body, err)
	}
	tc.Close()
	if n := r.p.Stats().TCPWaitingDrops; n != 0 {
		t.Errorf("tcp_waiting_drops %d, want 0: each connection ended before the next came", n)
	}
}

// A flow only a name could let through whose destination cannot be dialled
// counts in tcp_dial_errors whoever dials it: the proxy for a splice
// (dialAllowed), the interceptor for a bump (dialBumped).
func TestNamedOnlyDialErrorCounted(t *testing.T) {
	for _, action := range []string{"splice", "bump"} {
		t.Run(action, func(t *testing.T) {
			dc := new(switchChecker)
			dc.pass.Store(true)
			r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, action), clsOptions{bump: true, check: dc.check})
			ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
			closed := ln.Addr().(*net.TCPAddr).AddrPort()
			ln.Close()
			c := r.dial(t, closed)
			defer c.Close()
			if err := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: clsRoots(r)}).Handshake(); err == nil || !isReset(err) {
				t.Errorf("handshake to a closed port: %v, want a reset", err)
			}
			if rec := r.record(t, c, "tls"); rec.Result != "refused" || rec.Action != action {
				t.Errorf("record %+v, want %s, its dial refused", rec, action)
			}
			if n := r.p.Stats().TCPDialErrors; n != 1 {
				t.Errorf("tcp_dial_errors %d, want 1", n)
			}
		})
	}
}
