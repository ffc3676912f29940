package sniff

import (
	"net"
	"os"
	"syscall"
	"testing"
)

// TestEndOfInputNotTheClientVanishing: a client that vanished (its
// keepalives or retransmissions unanswered: ETIMEDOUT, whose Timeout()
// is true) broke its connection; it is not sniffing's own deadline
// passing, and sniffing fails on it (the record says timeout, "connection
// timed out") rather than classifying what came so far as if the client
// had paused.
func TestEndOfInputNotTheClientVanishing(t *testing.T) {
	vanished := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ETIMEDOUT}
	if endOfInput(vanished) {
		t.Errorf("endOfInput(%v) = true; want false: the client vanished", vanished)
	}
	deadline := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	if !endOfInput(deadline) {
		t.Errorf("endOfInput(%v) = false; want true: sniffing's own deadline", deadline)
	}
}
