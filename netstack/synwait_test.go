package netstack

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestReconnectRightAfterReset: a client that resets its connection and at
// once opens a new one from the same port (a Linux client's close with
// SO_LINGER 0, then connect on the same source port: 70 µs apart) gets
// the new connection, as from Linux, which takes the RST before the SYN
// comes. gVisor handles a connection's segments on its own goroutine: the
// SYN was queued on the old connection before that had taken the RST, and
// when it closed, offered to no listener but answered with a RST, refusing
// 40-70% of such connections through the appliance. Both in one batch of
// the reader's, in two, and with the stack's FIN crossing the RST (a proxy
// that closed its end before the stack had the RST: the FIN leaves after
// the RST came, and the flow looks alive again).
func TestReconnectRightAfterReset(t *testing.T) {
	for _, fam := range groFamilies {
		for _, mode := range []string{"two batches", "one batch", "FIN crossing"} {
			t.Run(fam.name+"/"+mode, func(t *testing.T) {
				r := newGRORig(t, fam.client, fam.server)
				for i := range 20 {
					rst := clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil)
					r.seq += 1 << 20 // a later ISN, as Linux picks
					syn := clientSegment(r.client, r.server, r.seq, 0, header.TCPFlagSyn, nil)
					switch mode {
					case "one batch":
						r.batch(rst, syn)
					case "two batches":
						r.batch(rst)
						r.batch(syn)
					case "FIN crossing":
						r.batch(rst)
						// What the reply path records of the stack's FIN.
						r.flow(t).tcpStack(flagFin | flagAck)
						r.batch(syn)
					}
					r.seq++
					got := r.nextReply(t, 2*time.Second)
					if got.Flags() != header.TCPFlagSyn|header.TCPFlagAck || got.AckNumber() != r.seq {
						t.Fatalf("connection %d: the SYN right after the RST was answered %s (ack %d), want a SYN-ACK of %d", i+1, got.Flags(), got.AckNumber(), r.seq)
					}
					r.ack = got.SequenceNumber() + 1
					r.batch(clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagAck, nil))
					select {
					case c := <-r.conns:
						t.Cleanup(c.Abort)
					case <-time.After(5 * time.Second):
						t.Fatalf("connection %d was not accepted", i+1)
					}
				}
			})
		}
	}
}

// TestSynAfterIgnoredReset: a SYN after a RST the stack does not take (out
// of its window: the connection lives on) reaches the stack all the same,
// after a bounded wait, and is answered as on a live connection: with an
// ACK of what the stack expects (RFC 5961 4.2), which the client's RST
// then ends the old connection with.
func TestSynAfterIgnoredReset(t *testing.T) {
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORig(t, fam.client, fam.server)
			r.batch(clientSegment(r.client, r.server, r.seq+0x40000000, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
			start := time.Now()
			r.batch(clientSegment(r.client, r.server, r.seq+1<<20, 0, header.TCPFlagSyn, nil))
			got := r.nextReply(t, 2*time.Second)
			if got.Flags() != header.TCPFlagAck || got.AckNumber() != r.seq {
				t.Fatalf("the SYN on a live connection was answered %s (ack %d), want a challenge ACK of %d", got.Flags(), got.AckNumber(), r.seq)
			}
			if took := time.Since(start); took > time.Second {
				t.Fatalf("the SYN waited %v", took)
			}
		})
	}
}
