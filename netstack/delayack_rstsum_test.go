package netstack

import (
	"encoding/binary"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestDelayedAckKeptOnUntakenReset: a RST with exactly the sequence number
// the held ACK acknowledges, which the stack nevertheless does not take,
// leaves the held ACK to leave within the delay: one whose TCP checksum
// does not hold (without a capture tap nothing checks it before the stack,
// which drops it): the held ACK was dropped, and the client's last segment
// went unacknowledged until it sent it again. And one in the first
// fragment of a datagram whose rest never comes, whose checksum cannot be
// checked before reassembly: it is refused before the flow table
// (stackRefuses), so it never drops the held ACK either.
func TestDelayedAckKeptOnUntakenReset(t *testing.T) {
	const delay = 300 * time.Millisecond
	cases := []struct {
		name string
		rst  func(r *delayRig) []byte
	}{
		{"bad checksum", func(r *delayRig) []byte {
			rst := clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil)
			sum := len(rst) - header.TCPMinimumSize + 16 // no options: the TCP header ends the packet
			binary.BigEndian.PutUint16(rst[sum:], binary.BigEndian.Uint16(rst[sum:])^0x5a5a)
			return rst
		}},
		{"first fragment", func(r *delayRig) []byte {
			// A RST may carry data (RFC 9293 3.5.3): enough of it to
			// need two fragments.
			rst := clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, make([]byte, 100))
			return fragment(rst, 77, 96)[0]
		}},
	}
	for _, fam := range groFamilies {
		for _, tapped := range []bool{false, true} {
			for _, tc := range cases {
				name := fam.name + "/" + tc.name + "/no tap"
				if tapped {
					name = fam.name + "/" + tc.name + "/tap"
				}
				t.Run(name, func(t *testing.T) {
					tap := &ackTap{}
					g := newGRORigOpts(t, fam.client, fam.server, func(c *Config) {
						c.AckDelay = delay
						if tapped {
							c.Tap = tap
						}
					}, nil, nil)
					r := &delayRig{groRig: g, t: t, tap: tap}
					r.quicken(0)
					start := time.Now()
					r.batch(r.data([]byte("GET /2")))
					r.waitHeld(1)
					r.batch(tc.rst(r))
					r.pureAck(2*delay, r.seq, "the held ACK after a RST the stack did not take")
					if took := time.Since(start); took > delay+delay/2 {
						t.Fatalf("the ACK of the client's segment left %v after it came, past the %v delay", took, delay)
					}
					// The flow lives on: the server's next segment goes out.
					if got := r.answer(t, "200 still here"); got.AckNumber() != r.seq {
						t.Fatalf("the server's segment acknowledges %d, want %d", got.AckNumber(), r.seq)
					}
				})
			}
		}
	}
}
