package netstack

import (
	"bytes"
	"io"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// discardTap is a capture tap that looks at nothing.
type discardTap struct{}

func (discardTap) Packet(uint64, uint32, bool, int64, Packet, []byte) {}

// strayData is a client's data segment on ports with no connection: the
// capture withholds it (tap_withheld), and it goes to the stack at once,
// past the reader's batch.
func strayData(client, server netip.AddrPort, i int) []byte {
	stray := netip.AddrPortFrom(client.Addr(), 41999)
	return clientSegment(stray, server, uint32(5000+i*1000), 777, header.TCPFlagAck, []byte("0123456789"))
}

// TestTapWithheldLeavesOtherFlowsBatched: with a capture on, a withheld
// segment goes in at once, and the reader's batch is flushed before it
// only when it holds segments of the withheld one's own flow (which go in
// first). Each withheld segment flushed the whole batch, every flow's: a
// client's 32 bulk segments interleaved with another's stray data reached
// TCP as 32 instead of one, and a download's 32 pure ACKs went in one by
// one instead of thinned (review r1ackreuse F2): anyone's stray data, or a
// client still uploading after the proxy aborted its connection, cost its
// neighbours their coalescing.
func TestTapWithheldLeavesOtherFlowsBatched(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORigWith(t, fam.client, fam.server, func(c *Config) { c.Tap = discardTap{} })
			segs := func() uint64 { return r.st.stack.Stats().TCP.ValidSegmentsReceived.Value() }
			const n, size = 32, 1000
			var want []byte
			run := func(interleave bool) uint64 {
				var pkts [][]byte
				for i := range n {
					payload := bytes.Repeat([]byte{byte('a' + i%26)}, size)
					want = append(want, payload...)
					pkts = append(pkts, r.data(payload))
					if interleave {
						pkts = append(pkts, strayData(fam.client, fam.server, i))
					}
				}
				before, withheld := segs(), r.s.Stats().TapWithheld
				r.batch(pkts...)
				if got := r.s.Stats().TapWithheld - withheld; interleave && got != n {
					t.Errorf("withheld %d of %d stray segments", got, n)
				}
				return segs() - before
			}
			alone := run(false)
			mixed := run(true)
			t.Logf("%d segments reached TCP as %d alone, %d interleaved with %d withheld", n, alone, mixed, n)
			got := make([]byte, len(want))
			r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(r.conn, got); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("the stream came out broken: %v", err)
			}
			if mixed > 2*alone { // the strays, with no connection, are no valid segments
				t.Errorf("withheld segments split the batch: %d segments at TCP, %d alone", mixed, alone)
			}
		})
	}
}

// TestTapWithheldLeavesAcksThinned: the pure ACKs of a download that one
// batch holds are thinned to one whether or not withheld segments of
// another flow come between them.
func TestTapWithheldLeavesAcksThinned(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORigWith(t, fam.client, fam.server, func(c *Config) { c.Tap = discardTap{} })
			segs := func() uint64 { return r.st.stack.Stats().TCP.ValidSegmentsReceived.Value() }
			sent := r.ack
			run := func(interleave bool) uint64 {
				if _, err := r.conn.Write(make([]byte, 12800)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
				var pkts [][]byte
				for i := 1; i <= 32; i++ {
					pkts = append(pkts, clientSegmentOpts(r.client, r.server, r.seq, sent+uint32(400*i), header.TCPFlagAck, r.opts, nil))
					if interleave {
						pkts = append(pkts, strayData(fam.client, fam.server, i))
					}
				}
				sent += 12800
				before := segs()
				r.batch(pkts...)
				return segs() - before
			}
			alone := run(false)
			mixed := run(true)
			t.Logf("32 pure ACKs reached TCP as %d alone, %d interleaved with 32 withheld", alone, mixed)
			if mixed > 2*alone {
				t.Errorf("withheld segments undid the thinning: %d segments at TCP, %d alone", mixed, alone)
			}
		})
	}
}
