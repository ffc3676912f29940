package hostconn

import (
	"io"
	"testing"
	"time"
)

// TestSendPayloadCounts: the send queue's counts, read by raw ioctls, say
// what a peer that does not read has not acknowledged and what its
// window kept back, the FIN left out; and nothing once the peer has read
// it all, whether or not the FIN is queued.
func TestSendPayloadCounts(t *testing.T) {
	c, peer := wrappedPair(t)
	if u, ns, err := c.SendPayload(); err != nil || u != 0 || ns != 0 {
		t.Fatalf("nothing written: SendPayload = %d, %d, %v; want 0, 0", u, ns, err)
	}

	// Written until the peer's window and the socket's buffer are full.
	chunk := make([]byte, 64<<10)
	written := 0
	for written < 64<<20 {
		_ = c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Write(chunk)
		written += n
		if err != nil {
			break
		}
	}
	_ = c.SetWriteDeadline(time.Time{})
	u, ns, err := c.SendPayload()
	if err != nil {
		t.Fatal(err)
	}
	if u <= 0 || ns <= 0 || ns > u || u > written {
		t.Fatalf("a peer that reads nothing: unacked %d, not sent %d of %d written; want 0 < not sent <= unacked <= written", u, ns, written)
	}

	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	u2, ns2, err := c.SendPayload()
	if err != nil {
		t.Fatal(err)
	}
	if u2 != u || ns2 != ns {
		t.Fatalf("after CloseWrite: unacked %d, not sent %d; want %d, %d as before (the FIN left out)", u2, ns2, u, ns)
	}

	if _, err := io.Copy(io.Discard, peer); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		u, ns, err := c.SendPayload()
		if err != nil {
			t.Fatal(err)
		}
		if u == 0 && ns == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the peer read it all: unacked %d, not sent %d 5s on; want 0, 0", u, ns)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
