package sniff

import (
	"bufio"
	"time"
)

// SniffWithin is Sniff with a limit on the wait for the first byte: a
// client that sends nothing for wait is KindOther with Peeked 0. What
// comes after the first byte has CompleteTimeout to arrive, as in Sniff: a
// longer wait would let a client that sends one byte and stalls hold the
// connection (and its share of waiting ones) for wait again.
// It is for a connection that nothing else can end the wait for (no
// destination dialled to speak first), and that nothing but its first
// bytes can let through.
func SniffWithin(br *bufio.Reader, conn ReadDeadliner, wait time.Duration) (Result, error) {
	return sniff(br, conn, wait, CompleteTimeout)
}
