package netstack

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestDelayedAckDroppedOnReset: the client's RST drops its flow's held ACK,
// which would reach no connection.
func TestDelayedAckDroppedOnReset(t *testing.T) {
	const delay = 300 * time.Millisecond
	fam := groFamilies[0]
	r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
	r.quicken(0)
	r.batch(r.data([]byte("GET /2")))
	r.waitHeld(1)
	r.batch(clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
	r.noReply(t, delay+delay/2)
	r.wantAcks("reset", 1, 0)
	r.tapped()
}

// TestDelayedAckKeptOnRefusedReset: a RST the stack does not take (out of
// its window: dropped; in it but not exact: a challenge ACK, RFC 5961)
// leaves the flow live, and the held ACK of the client's last segment
// still leaves within the delay.
func TestDelayedAckKeptOnRefusedReset(t *testing.T) {
	const delay = 300 * time.Millisecond
	for _, tc := range []struct {
		name      string
		off       uint32 // the RST's sequence number past the next expected
		challenge bool   // the stack answers with a challenge ACK
	}{
		{"out of window", 0x40000000, false},
		{"in window, not exact", 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fam := groFamilies[0]
			r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
			r.quicken(0)
			start := time.Now()
			r.batch(r.data([]byte("GET /2")))
			r.waitHeld(1)
			r.batch(clientSegment(r.client, r.server, r.seq+tc.off, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
			r.pureAck(2*delay, r.seq, "the held ACK after a refused RST")
			if took := time.Since(start); took > delay+delay/2 {
				t.Fatalf("the ACK of the client's segment left %v after it came, past the %v delay", took, delay)
			}
			if tc.challenge {
				r.pureAck(2*delay, r.seq, "the challenge ACK")
			}
			// The flow lives on: the server's next segment goes out.
			if got := r.answer(t, "200 still here"); got.AckNumber() != r.seq {
				t.Fatalf("the server's segment acknowledges %d, want %d", got.AckNumber(), r.seq)
			}
		})
	}
}
