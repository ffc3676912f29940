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
// A copy that came after the first SYN had gone in (the stack let the old
// connection go first) waits behind the new connection instead, and the
// new connection answers it with an ACK some 20 ms later, perhaps in a
// later round: answers about an earlier round's SYNs are skipped.
func TestSynWaitDuplicate(t *testing.T) {
	for _, fam := range groFamilies {
		for _, mode := range []string{"same ISN", "new ISN"} {
			t.Run(fam.name+"/"+mode, func(t *testing.T) {
				r := newGRORig(t, fam.client, fam.server)
				replaced, skipped, atOnce := 0, 0, 0
				earlier := map[uint32]bool{} // acks of earlier rounds' SYNs
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
					got, late := synAnswer(t, r, again, earlier)
					skipped += late
					earlier[first+1], earlier[r.seq+1] = true, true
					waited := r.s.Stats().Drops["syn_waiting"] > dropped
					switch {
					case got.Flags() != header.TCPFlagSyn|header.TCPFlagAck:
						t.Fatalf("connection %d: the SYN right after the RST, and another, were answered %s ack %d first, want a SYN-ACK", i+1, got.Flags(), got.AckNumber())
					case got.AckNumber() == r.seq+1:
						if first != r.seq && waited {
							replaced++
						}
					case got.AckNumber() == first+1 && !waited && first == r.seq:
						// It went in before its copy came: no longer waiting.
					case got.AckNumber() == first+1 && !waited:
						// It went in at once, the stack done with the RST
						// before it came, and the other, with another ISN,
						// lands on the half-open connection it made (at once,
						// or after waiting behind it: the stack holds a
						// connection on the 4-tuple), which gVisor then
						// resets (two SYNs, two ISNs), as it did with no
						// wait: the wait was not tried. Start afresh.
						atOnce++
						got = r.synAfresh(t, first+1, got.SequenceNumber()+1, earlier)
					case got.AckNumber() == first+1:
						t.Fatalf("connection %d: SYN-ACK of %d, of the first SYN, which waited and was replaced", i+1, got.AckNumber())
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
				t.Logf("%d answers about an earlier round's SYN skipped; %d of 20 first SYNs went in at once, the other with another ISN after them", skipped, atOnce)
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
// synwait.go). Answers whose ack is in earlier, about SYNs of the client's
// earlier connections on the port, are skipped, and counted.
func synAnswer(t *testing.T, r *groRig, syn []byte, earlier map[uint32]bool) (header.TCP, int) {
	t.Helper()
	buf := make([]byte, maxDatagram)
	skipped := 0
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
			if tcp != nil && earlier[tcp.AckNumber()] {
				skipped++
				if tcp.Flags() == header.TCPFlagSyn|header.TCPFlagAck {
					// A copy of an earlier round's SYN, taken in after
					// that round's connection was reset, made a half-open
					// one, which holds the port: the client's kernel,
					// whose SYN it does not acknowledge, resets it (RFC
					// 9293 3.10.7.3), and its next SYN goes in. Not
					// answered so, the stack kept the port for its
					// SYN-ACK's retries, and the client's SYNs meanwhile
					// were answered with ACKs (3 of 60 runs under load).
					r.batch(clientSegment(r.client, r.server, tcp.AckNumber(), 0, header.TCPFlagRst, nil))
				}
				continue
			}
			if tcp != nil {
				return bytes.Clone(tcp), skipped
			}
		}
	}
	panic("unreachable")
}

// synAfresh ends the client's half-open connection whose SYN-ACK the
// client acknowledges with ack (its next sequence number seq) once the
// stack has answered every SYN sent, and opens a new one on the port,
// its SYN no longer right after a RST; it returns the new SYN-ACK, r.seq
// set to the new ISN.
func (r *groRig) synAfresh(t *testing.T, seq, ack uint32, earlier map[uint32]bool) header.TCP {
	t.Helper()
	time.Sleep(2 * maxSynWait)
	r.batch(clientSegment(r.client, r.server, seq, ack, header.TCPFlagRst|header.TCPFlagAck, nil))
	time.Sleep(2 * maxSynWait)
	r.seq += 1 << 20
	syn := clientSegment(r.client, r.server, r.seq, 0, header.TCPFlagSyn, nil)
	r.batch(syn)
	got, _ := synAnswer(t, r, syn, earlier)
	if got.Flags() != header.TCPFlagSyn|header.TCPFlagAck || got.AckNumber() != r.seq+1 {
		t.Fatalf("a SYN %v after the client's RST answered %s ack %d, want a SYN-ACK of %d", 2*maxSynWait, got.Flags(), got.AckNumber(), r.seq+1)
	}
	return got
}
