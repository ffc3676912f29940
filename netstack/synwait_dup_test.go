package netstack

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestSynWaitDuplicate: the SYN right after the client's RST waits for the
// stack to let the old connection go; a copy of it within the wait (a
// duplicate on the way, or a client repeating it quickly) went in at once,
// landed on the old connection and was answered with the RST that refuses
// the client's connect (20 of 20). The copy is dropped, the waiting SYN
// answers for both; a SYN with another ISN takes the waiting one's place,
// as the client's socket knows only its latest, and the SYN-ACK answers it.
func TestSynWaitDuplicate(t *testing.T) {
	for _, fam := range groFamilies {
		for _, mode := range []string{"same ISN", "new ISN"} {
			t.Run(fam.name+"/"+mode, func(t *testing.T) {
				r := newGRORig(t, fam.client, fam.server)
				replaced := 0
				for i := range 20 {
					rst := clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil)
					r.seq += 1 << 20
					first := r.seq
					syn := clientSegment(r.client, r.server, r.seq, 0, header.TCPFlagSyn, nil)
					if mode == "new ISN" {
						r.seq += 1 << 10
					}
					again := clientSegment(r.client, r.server, r.seq, 0, header.TCPFlagSyn, nil)
					dropped := r.s.Stats().Drops["syn_waiting"]
					r.batch(rst, syn, again)
					got := synAnswer(t, r, again)
					waited := r.s.Stats().Drops["syn_waiting"] > dropped
					switch {
					case got.Flags() != header.TCPFlagSyn|header.TCPFlagAck:
						t.Fatalf("connection %d: the SYN right after the RST, and another, were answered %s ack %d first, want a SYN-ACK", i+1, got.Flags(), got.AckNumber())
					case got.AckNumber() == r.seq+1:
						if first != r.seq && waited {
							replaced++
						}
					case got.AckNumber() == first+1 && !waited:
						r.seq = first // it went in before the other came: no longer waiting
					default:
						t.Fatalf("connection %d: SYN-ACK of %d, want %d (the latest SYN's) or %d", i+1, got.AckNumber(), r.seq+1, first+1)
					}
					r.seq++
					r.ack = got.SequenceNumber() + 1
					r.batch(clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagAck, nil))
					select {
					case c := <-r.conns:
						t.Cleanup(c.Abort)
					case <-time.After(5 * time.Second):
						t.Fatalf("connection %d not accepted", i+1)
					}
				}
				if mode == "new ISN" && replaced == 0 {
					t.Error("no SYN took a waiting one's place")
				}
				if mode == "same ISN" && r.s.Stats().Drops["syn_waiting"] == 0 {
					t.Error("no copy of a waiting SYN dropped")
				}
			})
		}
	}
}

// synAnswer reads the stack's first answer to the client's SYN, sending
// syn again after a second without one, as the client's kernel does (a
// SYN whose wait runs out with the old connection still held is dropped:
// synwait.go).
func synAnswer(t *testing.T, r *groRig, syn []byte) header.TCP {
	t.Helper()
	buf := make([]byte, maxDatagram)
	for try := range 3 {
		r.gwlb.SetReadDeadline(time.Now().Add(time.Second))
		for {
			tcp, err := readReplyTCP(r.gwlb, buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && try < 2 {
				r.batch(syn)
				break
			}
			if err != nil {
				t.Fatalf("waiting for the answer to a SYN: %v", err)
			}
			if tcp != nil {
				return bytes.Clone(tcp)
			}
		}
	}
	panic("unreachable")
}
