package netstack_test

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestReadKeepsVanishedClient: a client that vanishes (its stack drops
// everything the appliance sends, so the keep-alive probes go unanswered)
// breaks the connection with the stack's timeout. The Read waiting on it
// takes that report, the stack's only one, and the Conn keeps it:
// ClientBroke says ETIMEDOUT, after Close too. Unkept, the session whose
// HTTP/2 server read it first ended as if the client had closed, and its
// records said ok where a vanished client is recorded timeout.
func TestReadKeepsVanishedClient(t *testing.T) {
	r := newConnRigTCP(t, netstack.TCPOptions{
		KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2,
	})
	_, _, c := r.dialEndpoint()
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		read <- err
	}()
	r.client.SetTap(func([]byte) bool { return true }) // the client is gone
	var rerr error
	select {
	case rerr = <-read:
	case <-time.After(10 * time.Second):
		t.Fatal("the read did not end 10 s after the client vanished (keep-alives give up within a second)")
	}
	if rerr == nil {
		t.Fatal("the read after the client vanished returned no error")
	}
	t.Logf("read: %v", rerr)
	c.Close()
	if got := c.ClientBroke(); !errors.Is(got, syscall.ETIMEDOUT) {
		t.Errorf("ClientBroke after a read took the client's vanishing: %v, want ETIMEDOUT", got)
	}
}
