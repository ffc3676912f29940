package hostconn

import (
	"net"
	"testing"
	"time"
)

// TestSendPayloadAgreesWithTheFIN: the send counts and the note of a
// queued FIN are read as one: a count asked for between CloseWrite's
// shutdown (from which the kernel counts the FIN) and its note of the FIN
// waits for the note, where read apart a reset in between had the FIN
// counted as a byte of payload never sent (a tunnel's bytes_out one short).
func TestSendPayloadAgreesWithTheFIN(t *testing.T) {
	c, _ := wrappedPair(t)
	inGap, release := make(chan struct{}), make(chan struct{})
	old := afterShutdown
	t.Cleanup(func() { afterShutdown = old })
	afterShutdown = func() { close(inGap); <-release }
	closed := make(chan error, 1)
	go func() { closed <- c.CloseWrite() }()
	<-inGap
	counted := make(chan bool, 1)
	go func() {
		_, _, err := c.SendPayload()
		counted <- err == nil && c.FINQueued()
	}()
	select {
	case <-counted:
		t.Fatal("the counts were read between the shutdown and the note of its FIN")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if ok := <-counted; !ok {
		t.Fatal("the counts, read after the shutdown, do not see its FIN noted")
	}
}

// wrappedPair dials a loopback listener and returns the dialled end
// wrapped, and the accepted end; both are closed when t ends.
func wrappedPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln := loopback(t)
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close(); peer.Close() })
	return Wrap(raw).(*Conn), peer
}
