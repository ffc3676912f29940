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

// TestDelayedAckNotHeldAfterTakenReset: a client that ends with a segment
// and a RST right after it (a bumped connection's client closing with the
// appliance's close_notify unread: its close_notify and FIN, then a RST)
// has the RST pass the reader before the stack has acknowledged the
// segment. The ACK the stack makes then acknowledges exactly the RST's
// sequence number: the stack takes the RST next, and the ACK would reach
// no connection, only draw another RST. It must not leave, neither at once
// nor once its delay has run out (one datagram out and one in per bumped
// connection, and a timer's wake-up, before).
func TestDelayedAckNotHeldAfterTakenReset(t *testing.T) {
	const delay = 100 * time.Millisecond
	for _, fin := range []bool{false, true} {
		t.Run(map[bool]string{false: "data then RST", true: "data and FIN then RST"}[fin], func(t *testing.T) {
			fam := groFamilies[0]
			r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
			r.quicken(0)
			last := r.data([]byte("close_notify"))
			if fin {
				last = clientSegment(r.client, r.server, r.seq-uint32(len("close_notify")), r.ack, header.TCPFlagAck|header.TCPFlagFin|header.TCPFlagPsh, []byte("close_notify"))
				r.seq++
			}
			// The second RST is the client's answer to the appliance's
			// own close_notify, come after it reset: its number is the
			// acknowledgement that segment carried, before the client's
			// close_notify.
			before := r.seq - uint32(len("close_notify"))
			if fin {
				before--
			}
			r.batch(last,
				clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil),
				clientSegment(r.client, r.server, before, 0, header.TCPFlagRst, nil))
			r.noReply(t, 2*delay)
			r.tapped()
		})
	}
}
