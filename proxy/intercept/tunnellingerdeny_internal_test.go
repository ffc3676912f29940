package intercept

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A real linger (closeDelivering's, lingerTail) past its first 2 s, when it
// looks at its stop only once a second, is ended at once by a reload's
// deny: the linger's look wakes it. With a wait's look (newReloadLook),
// whose deny wakes no linger, it ended about 700 ms after the deny, at its
// next look (review r8s28 F2).
func TestLingerTailReloadDenyEndsItAtOnce(t *testing.T) {
	before, after := checkOnPolicies(t, "www.example.test")
	release := make(chan struct{})
	answered := make(chan time.Time, 1)
	ic, holder := checkingInterceptor(before, func(ctx context.Context, _, name string, _ netip.Addr) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		answered <- time.Now()
		return errors.New(name + " resolves to 203.0.113.9")
	})
	clientEnd, proxySide := net.Pipe()
	defer clientEnd.Close()
	dest := netip.MustParseAddrPort("192.0.2.10:443")
	s := pipeSession(ic, proxySide, "tcp", dest)
	reload := new(tunnelReload).init(s, before, policy.Subject{Domain: "www.example.test", Dest: dest}, &records.Record{}, destVouch{}, false)
	u := &upgradedBody{reload: reload}

	// A connection over ::1 whose peer reads nothing: its send queue
	// stays full, and the linger lasts.
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no ::1:", err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 8192) })
	}}
	cc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// The listener closes only once it has accepted: closed with the
	// connection still in its queue, it resets it.
	peer := <-acc
	ln.Close()
	if peer == nil {
		t.Fatal("no connection accepted")
	}
	defer peer.Close()
	peer.(*net.TCPConn).SetReadBuffer(4096)
	tc := cc.(*net.TCPConn)
	buf := make([]byte, 64<<10)
	for range 1000 {
		tc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := tc.Write(buf); err != nil {
			break
		}
	}
	tc.SetWriteDeadline(time.Time{})
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		time.Sleep(2500 * time.Millisecond) // past lingerSlowAfter: a look a second
		holder.Store(after)
		hostconn.WakeLingers() // as the policy's OnChange does: the look starts the check
		time.Sleep(100 * time.Millisecond)
		close(release)
	}()
	_, lerr := u.lingerTail(rc, false, func() time.Duration { return 10 * time.Second })
	end := time.Now()
	<-reloaded
	if !errors.Is(lerr, errTunnelReloadDenied) {
		t.Fatalf("the linger ended with %v, want the reload's deny", lerr)
	}
	var at time.Time
	select {
	case at = <-answered:
	default:
		t.Fatal("the linger ended with no check answered")
	}
	// About 100 µs; 300 ms leaves a loaded machine room, and is less
	// than half the next look's wait.
	if took := end.Sub(at); took > 300*time.Millisecond {
		t.Errorf("the linger ended %v after the reload's deny, want at once", took)
	}
}
