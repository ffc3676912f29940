package proxy

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

const checkWaitPolicy = `
policy:
  default: deny
  rules:
    - name: web
      domains: ["www.example.test"]
      action: allow
`

// slowCheck is a destination check that waits until the test releases it:
// started receives once each check begins, and the check then returns
// what is sent on release (nil: the destination passed).
type slowCheck struct {
	started chan struct{}
	release chan error
}

func newSlowCheck() *slowCheck {
	return &slowCheck{started: make(chan struct{}, 1), release: make(chan error, 1)}
}

func (s *slowCheck) check(ctx context.Context, _, _ string, _ netip.Addr) error {
	s.started <- struct{}{}
	select {
	case err := <-s.release:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *slowCheck) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-s.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the destination check never began")
	}
}

// queued is how many datagrams the client sent that nobody has read.
func (c *fakeUDPClient) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// TestQUICCheckWaitHoldsBoundedDatagrams: while an allowed QUIC flow's
// destination check waits, its client's datagrams are read as they come
// and at most checkWaitDatagrams (and checkWaitBytes, each charged its
// cost as well as its bytes) of them are held; the rest are dropped and
// counted. Zero-length datagrams count like any. Once the check passes,
// the ClientHello's datagrams and those held reach the destination, in
// order. Before, nothing read the flow while its check waited: the stack
// queued every datagram, and zero-length ones, which its receive buffer
// counts as no bytes at all, without bound.
func TestQUICCheckWaitHoldsBoundedDatagrams(t *testing.T) {
	flight := quicFirstFlight(t, "www.example.test")
	for _, tc := range []struct {
		name     string
		size     int // of each datagram sent during the check
		sent     int
		wantHeld int
	}{
		{"zero-length", 0, 1000, checkWaitDatagrams},
		{"large", 3000, 40, checkWaitBytes / (3000 + checkWaitCost)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newSlowCheck()
			p, _, recs := udpProxy(t, checkWaitPolicy, func(c *Config) { c.DestinationCheck = sc.check })
			dst := newUDPSink(t, true)
			c, _ := startFlow(p, quicClient, dst.addr(), flight...)
			sc.waitStarted(t)
			for i := range tc.sent {
				c.inject(bytes.Repeat([]byte{byte(i)}, tc.size))
			}
			if n := c.queued(); n != 0 {
				t.Fatalf("%d of the %d datagrams sent while the check waited are left unread", n, tc.sent)
			}
			if got, want := p.Stats().UDPCheckDrops, uint64(tc.sent-tc.wantHeld); got != want {
				t.Fatalf("udp_check_drops %d, want %d", got, want)
			}
			sc.release <- nil
			want := len(flight) + tc.wantHeld
			for i := range want {
				select {
				case d := <-c.out:
					if i < len(flight) && !bytes.Equal(d, flight[i]) {
						t.Fatalf("echo %d differs from the ClientHello's datagram %d", i, i)
					}
					if i >= len(flight) && (len(d) != tc.size || tc.size > 0 && d[0] != byte(i-len(flight))) {
						t.Fatalf("echo %d is not the %d-th datagram sent during the check", i, i-len(flight))
					}
				case <-time.After(3 * time.Second):
					t.Fatalf("echo %d of %d did not come", i+1, want)
				}
			}
			c.inject([]byte("after the check"))
			select {
			case d := <-c.out:
				if string(d) != "after the check" {
					t.Fatalf("echo %q after the check", d)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("no echo after the check")
			}
			<-c.ended
			if rec := recs.records(t, 1)[0]; rec.Kind != "quic" || rec.Action != "splice" || rec.DestCheck != "ok" || rec.Result != "ok" {
				t.Fatalf("record %+v", rec)
			}
		})
	}
}

// TestQUICCheckWaitClientGone: a client whose side closes while its flow's
// destination check waits is recorded as gone, with no host socket
// opened for it, not relayed.
func TestQUICCheckWaitClientGone(t *testing.T) {
	sc := newSlowCheck()
	p, _, recs := udpProxy(t, checkWaitPolicy, func(c *Config) { c.DestinationCheck = sc.check })
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "www.example.test")
	c, done := startFlow(p, quicClient, dst.addr(), flight...)
	sc.waitStarted(t)
	c.failRead(&net.OpError{Op: "read", Net: "udp", Err: net.ErrClosed})
	sc.release <- nil
	<-done
	rec := recs.records(t, 1)[0]
	if rec.Kind != "quic" || rec.Result != "reset" || !strings.Contains(rec.Error, "destination was checked") {
		t.Fatalf("record %+v", rec)
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams of a flow whose client left", n)
	}
	if a := p.Stats().UDPActive; a != 0 {
		t.Fatalf("udp_active %d", a)
	}
}

// TestQUICCheckWaitReadsOnAfterPortUnreachable: the client's own ICMP port
// unreachable while the check waits fails one read (gVisor's
// ErrConnectionRefused) and leaves the endpoint open. The reading goes
// on, dropping what comes (the flow ends once the check is over): had it
// stopped, everything the client sent for the rest of the check would
// queue unread, without bound. The flow is recorded as its client's
// going away, with no host socket opened.
func TestQUICCheckWaitReadsOnAfterPortUnreachable(t *testing.T) {
	const sent = 5000
	flight := quicFirstFlight(t, "www.example.test")
	sc := newSlowCheck()
	p, _, recs := udpProxy(t, checkWaitPolicy, func(c *Config) { c.DestinationCheck = sc.check })
	dst := newUDPSink(t, false)
	c, done := startFlow(p, quicClient, dst.addr(), flight...)
	sc.waitStarted(t)
	c.failRead(&net.OpError{Op: "read", Net: "udp", Err: syscall.ECONNREFUSED})
	for range sent {
		c.inject(nil)
	}
	if q := c.queued(); q > checkWaitDatagrams {
		t.Errorf("%d of %d datagrams left unread while the check waits (bound %d)", q, sent, checkWaitDatagrams)
	}
	if drops := p.Stats().UDPCheckDrops; drops < sent-checkWaitDatagrams {
		t.Errorf("udp_check_drops %d, want at least %d", drops, sent-checkWaitDatagrams)
	}
	sc.release <- nil
	<-done
	if rec := recs.records(t, 1)[0]; rec.Kind != "quic" || rec.Result != "reset" {
		t.Fatalf("record %+v, want the client's going away", rec)
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams of a flow whose client refused", n)
	}
}
