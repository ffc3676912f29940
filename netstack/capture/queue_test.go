package capture

import (
	"bytes"
	"testing"
)

// TestQueueKeepsJumboPacketsWhole: an inner packet a little over a small
// slot (a jumbo packet under GWLB's 8,500-byte MTU) is queued whole, not
// cut to a small slot's 2,048 bytes with an IP length larger than the
// packet.
func TestQueueKeepsJumboPacketsWhole(t *testing.T) {
	q := newQueue(64)
	for _, n := range []int{smallSlot, smallSlot + 1, smallSlot + 100, largeSlot} {
		pkt := make([]byte, n)
		copy(pkt, tcpPacket(t, client, dest, nil))
		for i := 40; i < n; i++ {
			pkt[i] = byte(i)
		}
		if !q.put(epA, 1, false, false, 1, pkt) {
			t.Fatalf("%d bytes: dropped", n)
		}
		s := <-q.full
		if !bytes.Equal(s.data(), pkt) {
			t.Errorf("%d-byte packet queued as %d bytes (or altered)", n, len(s.data()))
		}
		q.release(s)
	}
}

// TestQueuePlaintextShareGivenBackOnFullQueue: synthesized packets that
// find no free slot (the wire packets filled the queue) give back their
// place in the plaintext share: once the queue empties, plaintext is
// queued again. Otherwise, after a quarter of a queue's worth of such drops
// (a slow disk, a flood), every synthesized packet would be dropped for
// good.
func TestQueuePlaintextShareGivenBackOnFullQueue(t *testing.T) {
	q := newQueue(64) // 60 small slots, a plaintext share of 16
	pkt := tcpPacket(t, client, dest, []byte("x"))
	for q.put(epA, 1, false, false, 1, pkt) {
	}
	for range 100 {
		if q.put(epA, 1, false, true, 1, pkt) {
			t.Fatal("a synthesized packet queued into a full queue")
		}
	}
	for len(q.full) > 0 {
		q.release(<-q.full)
	}
	n := 0
	for range 16 {
		if q.put(epA, 1, false, true, 1, pkt) {
			n++
		}
	}
	if n != 16 {
		t.Errorf("after the queue emptied, %d of 16 synthesized packets queued (share %d, held %d)", n, q.plainLimit, q.plain.Load())
	}
}
