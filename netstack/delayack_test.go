package netstack

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// nextReply reads the rig's next reply segment, failing after wait.
func (r *groRig) nextReply(t *testing.T, wait time.Duration) header.TCP {
	t.Helper()
	buf := make([]byte, maxDatagram)
	r.gwlb.SetReadDeadline(time.Now().Add(wait))
	for {
		tcp, err := readReplyTCP(r.gwlb, buf)
		if err != nil {
			t.Fatalf("waiting for a reply: %v", err)
		}
		if tcp != nil {
			return bytes.Clone(tcp)
		}
	}
}

// noReply fails if a reply segment arrives within wait.
func (r *groRig) noReply(t *testing.T, wait time.Duration) {
	t.Helper()
	buf := make([]byte, maxDatagram)
	r.gwlb.SetReadDeadline(time.Now().Add(wait))
	for {
		tcp, err := readReplyTCP(r.gwlb, buf)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if tcp != nil {
			t.Fatalf("unexpected reply: flags %s, seq %d, ack %d, %d bytes", tcp.Flags(), tcp.SequenceNumber(), tcp.AckNumber(), len(tcp.Payload()))
		}
	}
}

// wantPureAck checks that tcp is a pure ACK of the client's bytes up to
// ack.
func wantPureAck(t *testing.T, tcp header.TCP, ack uint32, what string) {
	t.Helper()
	if tcp.Flags() != header.TCPFlagAck || len(tcp.Payload()) != 0 || tcp.AckNumber() != ack {
		t.Fatalf("%s: got flags %s, ack %d, %d bytes; want a pure ACK of %d", what, tcp.Flags(), tcp.AckNumber(), len(tcp.Payload()), ack)
	}
}

// answer has the server write s to the client, and reads it off the wire.
func (r *groRig) answer(t *testing.T, s string) header.TCP {
	t.Helper()
	if _, err := r.conn.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	tcp := r.nextReply(t, 5*time.Second)
	if string(tcp.Payload()) != s {
		t.Fatalf("got %q (flags %s), want the answer %q", tcp.Payload(), tcp.Flags(), s)
	}
	r.ack += uint32(len(s))
	r.batch(clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagAck, nil))
	return tcp
}

// TestDelayedAck plays a client by hand against a stack whose replies may
// carry its ACKs: what leaves, and when, as the server answers quickly,
// late, or not at all.
func TestDelayedAck(t *testing.T) {
	const delay = 300 * time.Millisecond
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newGRORigWith(t, fam.client, fam.server, func(c *Config) { c.AckDelay = delay })
			acks := func() (delayed, carried uint64) {
				st := r.s.Stats()
				return st.AcksDelayed, st.AcksCarried
			}
			waitHeld := func(delayed uint64) {
				t.Helper()
				waitUntil(t, 5*time.Second, "an ACK held", func() (bool, string) {
					d, c := acks()
					return d == delayed, fmt.Sprintf("%d delayed, %d carried", d, c)
				})
			}
			wantAcks := func(what string, delayed, carried uint64) {
				t.Helper()
				if d, c := acks(); d != delayed || c != carried {
					t.Fatalf("%s: %d ACKs delayed and %d carried, want %d and %d", what, d, c, delayed, carried)
				}
			}

			// A flow that has not answered quickly yet: its ACK leaves at
			// once. The answer right after makes it a quick one.
			r.batch(r.data([]byte("GET /1")))
			wantPureAck(t, r.nextReply(t, delay/2), r.seq, "first request")
			wantAcks("first request", 0, 0)
			r.answer(t, "200 one")

			// Now the answer carries the ACK: nothing leaves before it.
			r.batch(r.data([]byte("GET /2")))
			waitHeld(1)
			r.noReply(t, delay/10)
			wantAcks("second request, held", 1, 0)
			if got := r.answer(t, "200 two"); got.AckNumber() != r.seq {
				t.Fatalf("the answer acknowledges %d, want %d", got.AckNumber(), r.seq)
			}
			wantAcks("second request, carried", 1, 1)

			// No answer: the ACK leaves once the delay has run out, not
			// before, and the flow is no longer taken for a quick one.
			start := time.Now()
			r.batch(r.data([]byte("GET /3")))
			wantPureAck(t, r.nextReply(t, 5*time.Second), r.seq, "unanswered request")
			if waited := time.Since(start); waited < delay {
				t.Fatalf("the held ACK left after %s, before the delay (%s)", waited, delay)
			}
			wantAcks("unanswered request", 2, 1)
			r.batch(r.data([]byte("GET /4")))
			wantPureAck(t, r.nextReply(t, delay/2), r.seq, "request after a late ACK")
			wantAcks("request after a late ACK", 2, 1)
			r.answer(t, "200 four") // quick again

			// More than a segment's worth is acknowledged at once.
			r.batch(r.data(bytes.Repeat([]byte("b"), maxDelayedBytes+1)))
			wantPureAck(t, r.nextReply(t, delay/2), r.seq, "large request")
			wantAcks("large request", 2, 1)
			r.answer(t, "200 large")

			// A second ACK while one is held leaves at once, and the held
			// one is dropped: every second segment is acknowledged.
			r.batch(r.data([]byte("part 1")))
			waitHeld(3)
			r.batch(r.data([]byte("part 2")))
			wantPureAck(t, r.nextReply(t, delay/2), r.seq, "second segment")
			wantAcks("second segment", 3, 2)
			r.noReply(t, delay+delay/2)
			r.answer(t, "200 parts")

			// A duplicate ACK (a segment beyond a gap) is never held, and
			// a held ACK goes out before it.
			r.batch(r.data([]byte("GET /5")))
			waitHeld(4)
			wantAcks("request before a gap", 4, 2)
			gap := clientSegment(r.client, r.server, r.seq+100, r.ack, header.TCPFlagAck, []byte("later"))
			r.batch(gap)
			wantPureAck(t, r.nextReply(t, delay/2), r.seq, "held ACK before a duplicate")
			wantPureAck(t, r.nextReply(t, delay/2), r.seq, "duplicate ACK")
			wantAcks("duplicate ACK", 4, 2)
		})
	}
}

// TestDelayedAckOff: with no delay, every ACK leaves at once.
func TestDelayedAckOff(t *testing.T) {
	fam := groFamilies[0]
	r := newGRORig(t, fam.client, fam.server)
	for i := range 3 {
		r.batch(r.data([]byte("GET /")))
		wantPureAck(t, r.nextReply(t, 5*time.Second), r.seq, "request")
		if i < 2 {
			r.answer(t, "200")
		}
	}
	if st := r.s.Stats(); st.AcksDelayed != 0 {
		t.Fatalf("%d ACKs delayed with no delay", st.AcksDelayed)
	}
}
