package netstack

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The pure ACK of exactly the highest RST number the client sent that
// found no held ACK is dropped as it leaves (dropHeld, outbound): only
// while the stack may still take that RST (review rev33d F1, F2).

// connAlive reports whether the server side of r's connection is still
// open (a read times out) rather than reset (a read fails).
func connAlive(t *testing.T, r *delayRig, wait time.Duration) bool {
	t.Helper()
	buf := make([]byte, 4096)
	for {
		r.conn.SetReadDeadline(time.Now().Add(wait))
		_, err := r.conn.Read(buf)
		if err == nil {
			continue // data the client sent
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
			return true
		}
		t.Logf("read: %v", err)
		return false
	}
}

// TestDelayedAckRstOvertakingDataStillResets: an honest client sends "bye" then resets (RST at X, the end of
// "bye"), and the network delivers the RST first. The stack answers the
// RST (in window, not exact) with a challenge ACK of X-3; the client, its
// socket gone, answers that with a RST at X-3, which arrives after "bye"
// and is out of the window by then. Before 8b7aa53 the ACK of "bye" (X)
// left, and the client's answer to it (RST at X, exact) reset the
// appliance's side; with it the ACK was dropped and the appliance's
// connection lived on until it next sent. The challenge ACK forgets the
// RST now.
func TestDelayedAckRstOvertakingDataStillResets(t *testing.T) {
	const delay = 100 * time.Millisecond
	for _, quick := range []bool{false, true} {
		t.Run(map[bool]string{false: "flow not quick", true: "quick flow"}[quick], func(t *testing.T) {
			fam := groFamilies[0]
			r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
			if quick {
				r.quicken(0)
			}
			bye := r.data([]byte("bye"))
			x := r.seq
			r.batch(clientSegment(r.client, r.server, x, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
			ch := r.nextReply(t, 2*time.Second)
			t.Logf("challenge: flags %s ack %d (X=%d)", ch.Flags(), ch.AckNumber(), x)
			r.batch(bye)
			// The client's answer to the challenge ACK: RST at its ACK.
			r.batch(clientSegment(r.client, r.server, ch.AckNumber(), 0, header.TCPFlagRst, nil))
			// Whatever reaches the client now, it answers as a reset
			// socket does: a RST at the segment's ACK.
			buf := make([]byte, maxDatagram)
			r.gwlb.SetReadDeadline(time.Now().Add(3 * delay))
			got := 0
			for {
				tcp, err := readReplyTCP(r.gwlb, buf)
				if err != nil {
					break
				}
				if tcp == nil {
					continue
				}
				got++
				t.Logf("to the client: flags %s ack %d, %d bytes", tcp.Flags(), tcp.AckNumber(), len(tcp.Payload()))
				if tcp.Flags()&header.TCPFlagRst == 0 {
					r.batch(clientSegment(r.client, r.server, tcp.AckNumber(), 0, header.TCPFlagRst, nil))
				}
			}
			alive := connAlive(t, r, 500*time.Millisecond)
			t.Logf("segments to the client after the data: %d; appliance's connection alive: %v", got, alive)
			if alive {
				t.Errorf("the appliance's connection is still open after the client reset (no segment drew the client's exact RST)")
			}
		})
	}
}

// TestDelayedAckRefusedRstDropsNoAck: a RST the stack does not take (a spoofed one in the window, not
// exact: challenge ACK; or one out of the window: dropped silently) at
// X = the end of the live client's next write. The client then sends
// exactly up to X: the ACK of it must leave (it was dropped, and the
// client waited for its retransmission timer). The challenge ACK forgets
// the first; the second is never remembered.
func TestDelayedAckRefusedRstDropsNoAck(t *testing.T) {
	const delay = 100 * time.Millisecond
	for _, tc := range []struct {
		name string
		n    int // bytes the client sends next, X = rcv.nxt + n
	}{
		{"in window, not exact", 5},
		{"out of window (beyond 65535)", 70000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fam := groFamilies[0]
			r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
			r.quicken(0)
			x := r.seq + uint32(tc.n)
			r.batch(clientSegment(r.client, r.server, x, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
			if tc.n < 65535 {
				r.pureAck(time.Second, r.seq, "the challenge ACK")
			} else {
				r.noReply(t, delay)
			}
			// The server reads whatever comes.
			go func() {
				buf := make([]byte, 1<<16)
				for {
					if _, err := r.conn.Read(buf); err != nil {
						return
					}
				}
			}()
			payload := bytes.Repeat([]byte("d"), tc.n)
			for len(payload) > 0 {
				k := min(len(payload), 1000)
				last := payload[:k]
				r.batch(r.data(last))
				payload = payload[k:]
				tcp := r.nextReplyOrNil(t, 3*delay)
				if tcp == nil {
					t.Errorf("no ACK of the client's bytes up to %d (X=%d) within %v", r.seq, x, 3*delay)
					// The client's retransmission: its dup ACK now leaves.
					r.batch(clientSegment(r.client, r.server, r.seq-uint32(k), r.ack, header.TCPFlagAck, last))
					if tcp := r.nextReplyOrNil(t, 3*delay); tcp != nil {
						t.Logf("after the client's next segment: flags %s ack %d", tcp.Flags(), tcp.AckNumber())
					}
					return
				}
				for tcp.AckNumber() != r.seq {
					if tcp = r.nextReplyOrNil(t, 3*delay); tcp == nil {
						t.Fatalf("no ACK of %d", r.seq)
					}
				}
			}
		})
	}
}

// TestDelayedAckRstForgottenOnReuse: port reuse: the client resets exactly (nothing held: the RST number
// is kept) and opens a new connection on the 4-tuple whose first request
// ends exactly at the old RST's number. The SYN-ACK clears the state: the
// ACK leaves.
func TestDelayedAckRstForgottenOnReuse(t *testing.T) {
	const delay = 100 * time.Millisecond
	fam := groFamilies[0]
	r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
	r.quicken(0)
	key := r.flow(t).key
	x := r.seq
	r.batch(clientSegment(r.client, r.server, x, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
	waitUntil(t, 5*time.Second, "the stack to take the RST", func() (bool, string) {
		return !r.s.holdsTCP(&key), "old endpoint"
	})
	req := []byte("GET /new")
	r.reopen(x - uint32(len(req)) - 1)
	r.batch(r.data(req))
	if r.seq != x {
		t.Fatalf("setup: %d != %d", r.seq, x)
	}
	r.pureAck(time.Second, x, "the new connection's first ACK, at the old RST's number")
}

func (r *groRig) nextReplyOrNil(t *testing.T, wait time.Duration) header.TCP {
	t.Helper()
	buf := make([]byte, maxDatagram)
	r.gwlb.SetReadDeadline(time.Now().Add(wait))
	for {
		tcp, err := readReplyTCP(r.gwlb, buf)
		if err != nil {
			return nil
		}
		if tcp != nil {
			return bytes.Clone(tcp)
		}
	}
}
