package intercept

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A WebSocket tunnel whose client's connection broke (its reset, kept by
// the connection: netstack.Conn.ClientBroke) was cut: its record says
// reset, "the client's connection broke", not the ok of a tunnel the
// client ended by closing. The client watch's Abort says the same, but
// only when it wins the race with the tunnel's own end.
func TestTunnelOutcomeClientBroke(t *testing.T) {
	body := &recordingBody{tunnel: true}
	body.read.Store(4096)
	broke := syscall.ECONNRESET
	result, why, delivered := body.outcome(context.Background(), nil, broke)
	if result != "reset" || !strings.Contains(why, "the client's connection broke") || delivered != 4096 {
		t.Errorf("tunnel whose client reset: %s %q, %d bytes; want reset, the client's connection broke, 4096", result, why, delivered)
	}
	// A client that ended the tunnel with no break: ok.
	if result, why, _ := body.outcome(context.Background(), nil, nil); result != "ok" {
		t.Errorf("tunnel the client closed: %s %q; want ok", result, why)
	}
}

// A tunnel's Close waits for the upstream to end its side (upgradeDrain)
// only for a client that may still read it: one whose connection broke
// reads nothing more, and the wait held the upstream, and the records,
// for the whole drain.
func TestUpgradedCloseSkipsDrainForBrokenClient(t *testing.T) {
	up, origin := tcpPair(t)
	defer origin.Close()
	stopped := false
	u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { stopped = true; return true },
		ended: make(chan struct{}), tunnel: true,
		clientBroke: func() error { return syscall.ECONNRESET }}
	done := make(chan error, 1)
	go func() { done <- u.Close() }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Close of a tunnel whose client's connection broke waited for the upstream's end")
	}
	if !stopped {
		t.Error("Close did not stop the response's watch")
	}
	// The upstream got a close, not a half-close to wait on.
	origin.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := origin.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Errorf("the origin's read after the tunnel's close: %v; want its end", err)
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("no connection accepted")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
