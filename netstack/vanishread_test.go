package netstack_test

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestReadSaysETIMEDOUTForClientVanishedBeforeBytes: a client that
// connects and vanishes before its first bytes reads as one that vanished
// (ETIMEDOUT, "connection timed out") to every Read, the one that takes
// the stack's report too, as TryRead and the later reads say it. That
// Read said gonet's "operation timed out", no ETIMEDOUT and no timeout, and
// the connection's record said reset where the relay's says timeout for
// the same event.
func TestReadSaysETIMEDOUTForClientVanishedBeforeBytes(t *testing.T) {
	r := newConnRigTCP(t, netstack.TCPOptions{
		KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2,
	})
	_, _, c := r.dialEndpoint()
	r.client.SetTap(func([]byte) bool { return true }) // the client is gone
	for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the stack did not give up on the vanished client")
		}
	}
	buf := make([]byte, 16)
	for i := range 2 {
		_, err := c.Read(buf)
		if !errors.Is(err, syscall.ETIMEDOUT) || !strings.HasSuffix(err.Error(), "connection timed out") {
			t.Errorf("read %d: %v; want the client's vanishing, ETIMEDOUT", i+1, err)
		}
	}
}

// TestClientVanishedWithBytesInFlightTimesOut: a client that vanishes
// while the appliance has written it bytes, fewer than a send buffer (no
// write waits), is timed out by the user timeout (ClosedSendTimeout): the
// connection reads as broken, ETIMEDOUT. Keepalives do not run while data
// is outstanding: the connection, and its flow's record, were held until
// gVisor's fixed retransmission limit (15 min 25 s measured), whatever
// the configured bounds.
func TestClientVanishedWithBytesInFlightTimesOut(t *testing.T) {
	r := newConnRigTCP(t, netstack.TCPOptions{
		KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2,
		ClosedSendTimeout: time.Second,
	})
	_, _, c := r.dialEndpoint()
	r.client.SetTap(func([]byte) bool { return true }) // the client is gone
	if _, err := c.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); !c.Broken(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the stack did not give up on the vanished client 10 s after its user timeout of 1 s")
		}
	}
	if err := c.BrokenError(); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Errorf("broken by %v; want the client's vanishing, ETIMEDOUT", err)
	}
}
