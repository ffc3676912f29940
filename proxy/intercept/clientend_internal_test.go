package intercept

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// closedSoon waits, within bound, for c to be closed (its deadlines can
// no longer be set), and reports whether it was.
func closedSoon(c *net.TCPConn, bound time.Duration) bool {
	for end := time.Now().Add(bound); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if c.SetWriteDeadline(time.Time{}) != nil {
			return true
		}
	}
	return false
}

// TestHijackedConnLingeringCloseEndsSessionFirst: goproxy's Close of a
// client connection that lingers (clientend.go) ends the session at
// once (onClose: its records, its Done), before the client's end; the
// client gets the answer and the half-close, may still send (what it
// sends is read and dropped, no reset), and once it has ended its side
// the connection is closed. goproxy's own reads fail from the Close on,
// and a second Close leaves the linger be.
func TestHijackedConnLingeringCloseEndsSessionFirst(t *testing.T) {
	client, server := testnet.TCPPair(t)
	ended := make(chan struct{})
	cc := &hijackedConn{Conn: server, lingers: func() bool { return true }, onClose: func() { close(ended) }}
	if _, err := server.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- cc.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(drainWait / 2):
		t.Fatal("Close waited for the client's end: the session's records would too")
	}
	select {
	case <-ended:
	default:
		t.Fatal("Close returned without ending the session")
	}
	if _, err := cc.Read(make([]byte, 16)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("goproxy's read after its Close: %v; want net.ErrClosed", err)
	}
	if err := cc.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
	got, err := io.ReadAll(client) // to the appliance's FIN
	if err != nil || string(got) != "answer" {
		t.Fatalf("the client read %q, %v; want the answer and a clean end", got, err)
	}
	if closedSoon(server, 50*time.Millisecond) {
		t.Fatal("the connection was closed before the client's end")
	}
	if _, err := client.Write([]byte("late close_notify")); err != nil {
		t.Fatalf("the client's late bytes: %v", err)
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if !closedSoon(server, drainWait/2) {
		t.Error("the connection was not closed on the client's end")
	}
}

// TestHijackedConnNoLingerClosesAtOnce: a connection that does not
// linger (an aborted session's, a broken client's: lingers false) is
// closed by goproxy's Close itself.
func TestHijackedConnNoLingerClosesAtOnce(t *testing.T) {
	_, server := testnet.TCPPair(t)
	cc := &hijackedConn{Conn: server, lingers: func() bool { return false }}
	if err := cc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if server.SetWriteDeadline(time.Time{}) == nil {
		t.Error("Close left the connection of a session that does not linger open")
	}
}

// TestHijackedConnH1LingersOnClosingGoroutine: an HTTP/1 connection's
// lingering close (a cleartext one's too) runs on the goroutine of
// goproxy's Close, not on one of its own: an HTTP/1.0 client's every
// request is a connection. The session ends first; Close returns once
// the client has ended its side, with what it sent late read and
// dropped, not answered with a reset.
func TestHijackedConnH1LingersOnClosingGoroutine(t *testing.T) {
	client, server := testnet.TCPPair(t)
	ended := make(chan struct{})
	cc := &hijackedConn{Conn: server, h1: true, lingers: func() bool { return true }, onClose: func() { close(ended) }}
	if _, err := server.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("GET /next HTTP/1.1\r\n\r\n")); err != nil { // unread as goproxy closes
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- cc.Close() }()
	select {
	case <-ended:
	case <-time.After(drainWait / 2):
		t.Fatal("the session's end waited for the linger")
	}
	got, err := io.ReadAll(client) // to the appliance's FIN
	if err != nil || string(got) != "answer" {
		t.Fatalf("the client read %q, %v; want the answer and a clean end", got, err)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the client's end: the linger is not on its goroutine", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(drainWait / 2):
		t.Fatal("Close did not return on the client's end")
	}
	if !closedSoon(server, 50*time.Millisecond) {
		t.Error("the connection is still open after the linger")
	}
}
