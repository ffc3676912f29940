package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
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
	r.batch(clientSegmentOpts(r.client, r.server, r.seq, r.ack, header.TCPFlagAck, r.opts, nil))
	return tcp
}

// ackTap counts the pure ACKs the reply path shows the capture tap as
// sent.
type ackTap struct{ pureOut atomic.Int64 }

func (a *ackTap) Packet(_ uint64, _ uint32, out bool, _ int64, p Packet, pkt []byte) {
	tcp := header.TCP(pkt[p.Payload:p.Len])
	if out && p.Proto == protoTCP && tcp.Flags() == header.TCPFlagAck && len(tcp.Payload()) == 0 {
		a.pureOut.Add(1)
	}
}

// delayRig is a groRig whose server holds ACKs for delay, with counters.
type delayRig struct {
	*groRig
	t        *testing.T
	tap      *ackTap
	pureRead int64 // pure ACKs the client read
}

func newDelayRig(t *testing.T, client, server netip.AddrPort, delay time.Duration, synOpts, opts []byte) *delayRig {
	tap := &ackTap{}
	g := newGRORigOpts(t, client, server, func(c *Config) { c.AckDelay, c.Tap = delay, tap }, synOpts, opts)
	return &delayRig{groRig: g, t: t, tap: tap}
}

func (r *delayRig) acks() (delayed, carried uint64) {
	st := r.s.Stats()
	return st.AcksDelayed, st.AcksCarried
}

// waitHeld waits until delayed ACKs have been held in all.
func (r *delayRig) waitHeld(delayed uint64) {
	r.t.Helper()
	waitUntil(r.t, 5*time.Second, "an ACK held", func() (bool, string) {
		d, c := r.acks()
		return d == delayed, fmt.Sprintf("%d delayed, %d carried", d, c)
	})
}

func (r *delayRig) wantAcks(what string, delayed, carried uint64) {
	r.t.Helper()
	if d, c := r.acks(); d != delayed || c != carried {
		r.t.Fatalf("%s: %d ACKs delayed and %d carried, want %d and %d", what, d, c, delayed, carried)
	}
}

// pureAck reads the next reply within wait and checks that it is a pure
// ACK of the client's bytes up to ack.
func (r *delayRig) pureAck(wait time.Duration, ack uint32, what string) header.TCP {
	r.t.Helper()
	tcp := r.nextReply(r.t, wait)
	wantPureAck(r.t, tcp, ack, what)
	r.pureRead++
	return tcp
}

// tapped checks that the tap saw as many pure ACKs leave as the client
// read: none that was held and then carried, each held one that left.
func (r *delayRig) tapped() {
	r.t.Helper()
	if got := r.tap.pureOut.Load(); got != r.pureRead {
		r.t.Fatalf("the tap saw %d pure ACKs leave; the client read %d", got, r.pureRead)
	}
}

// quicken makes the flow one that answers quickly: a request, its ACK,
// and the answer at once.
func (r *delayRig) quicken(delayed uint64) {
	r.t.Helper()
	r.batch(r.data([]byte("GET /quick")))
	r.pureAck(r.delayHalf(), r.seq, "request of a flow not yet quick")
	r.wantAcks("request of a flow not yet quick", delayed, r.carriedNow())
	r.answer(r.t, "200 quick")
}

func (r *delayRig) carriedNow() uint64 { _, c := r.acks(); return c }

func (r *delayRig) delayHalf() time.Duration { return r.s.cfg.AckDelay / 2 }

// TestDelayedAck plays a client by hand against a stack whose replies may
// carry its ACKs: what leaves, and when, as the server answers quickly,
// late, or not at all.
func TestDelayedAck(t *testing.T) {
	const delay = 300 * time.Millisecond
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)

			// A flow that has not answered quickly yet: its ACK leaves at
			// once. The answer right after makes it a quick one.
			r.quicken(0)

			// Now the answer carries the ACK: nothing leaves before it.
			r.batch(r.data([]byte("GET /2")))
			r.waitHeld(1)
			r.noReply(t, delay/10)
			r.wantAcks("second request, held", 1, 0)
			if got := r.answer(t, "200 two"); got.AckNumber() != r.seq {
				t.Fatalf("the answer acknowledges %d, want %d", got.AckNumber(), r.seq)
			}
			r.wantAcks("second request, carried", 1, 1)

			// No answer in time: the ACK leaves once the delay has run
			// out, not before, and the flow is no longer taken for a quick
			// one, also when the answer then comes within the delay of the
			// late ACK.
			start := time.Now()
			r.batch(r.data([]byte("GET /3")))
			r.pureAck(5*time.Second, r.seq, "unanswered request")
			if waited := time.Since(start); waited < delay {
				t.Fatalf("the held ACK left after %s, before the delay (%s)", waited, delay)
			}
			r.wantAcks("unanswered request", 2, 1)
			time.Sleep(time.Until(start.Add(delay + delay/2)))
			r.answer(t, "200 three, late")
			r.batch(r.data([]byte("GET /4")))
			r.pureAck(delay/2, r.seq, "request after a late answer")
			r.wantAcks("request after a late answer", 2, 1)
			r.answer(t, "200 four") // quick again

			// More than a segment's worth is acknowledged at once.
			r.batch(r.data(bytes.Repeat([]byte("b"), maxDelayedBytes+1)))
			r.pureAck(delay/2, r.seq, "large request")
			r.wantAcks("large request", 2, 1)
			r.answer(t, "200 large")

			// A second ACK while one is held leaves at once, and the held
			// one is dropped: every second segment is acknowledged.
			r.batch(r.data([]byte("part 1")))
			r.waitHeld(3)
			r.batch(r.data([]byte("part 2")))
			r.pureAck(delay/2, r.seq, "second segment")
			r.wantAcks("second segment", 3, 2)
			r.noReply(t, delay+delay/2)
			r.answer(t, "200 parts")

			// A duplicate ACK (a segment beyond a gap) is never held, and
			// a held ACK goes out before it.
			r.batch(r.data([]byte("GET /5")))
			r.waitHeld(4)
			r.wantAcks("request before a gap", 4, 2)
			r.batch(clientSegment(r.client, r.server, r.seq+100, r.ack, header.TCPFlagAck, []byte("later")))
			r.pureAck(delay/2, r.seq, "held ACK before a duplicate")
			r.pureAck(delay/2, r.seq, "duplicate ACK")
			r.wantAcks("duplicate ACK", 4, 2)
			r.batch(clientSegment(r.client, r.server, r.seq+200, r.ack, header.TCPFlagAck, []byte("later still")))
			r.pureAck(delay/2, r.seq, "duplicate ACK with nothing held")
			r.wantAcks("duplicate ACK with nothing held", 4, 2)

			// The server's FIN carries a held ACK, and is not held itself.
			r.batch(r.data([]byte("GET /6")))
			r.waitHeld(5)
			if err := r.conn.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			fin := r.nextReply(t, delay/2)
			if fin.Flags() != header.TCPFlagAck|header.TCPFlagFin || fin.AckNumber() != r.seq {
				t.Fatalf("after close: flags %s, ack %d; want FIN|ACK of %d", fin.Flags(), fin.AckNumber(), r.seq)
			}
			r.wantAcks("FIN", 5, 3)
			r.tapped()
		})
	}
}

// TestDelayedAckOptions: with timestamps and SACK, as real clients have
// them, an ACK with timestamps is held, and one with SACK blocks is not.
func TestDelayedAckOptions(t *testing.T) {
	const delay = 300 * time.Millisecond
	ts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0}  // NOP NOP timestamps
	syn := []byte{4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0} // SACK permitted, timestamps
	fam := groFamilies[0]
	r := newDelayRig(t, fam.client, fam.server, delay, syn, ts)
	r.quicken(0)
	r.batch(r.data([]byte("GET /2")))
	r.waitHeld(1)
	if got := r.answer(t, "200 two"); len(got.Options()) == 0 {
		t.Fatal("no timestamps on the server's segments: the options were not taken")
	}
	r.wantAcks("timestamped ACK", 1, 1)

	// Segment 3, then segment 1, with 2 missing: the ACK of 1 moves the
	// acknowledgement forward but carries a SACK block for 3.
	one, two, three := []byte("aaaa"), []byte("bbbb"), []byte("cccc")
	seq := r.seq
	r.batch(clientSegmentOpts(r.client, r.server, seq+8, r.ack, header.TCPFlagAck, ts, three))
	r.pureAck(delay/2, seq, "duplicate ACK with a SACK block")
	r.batch(clientSegmentOpts(r.client, r.server, seq, r.ack, header.TCPFlagAck, ts, one))
	sack := r.pureAck(delay/2, seq+4, "forward ACK with a SACK block")
	if len(sack.Options()) <= len(ts) {
		t.Fatalf("the ACK of segment 1 has options %x: no SACK block", sack.Options())
	}
	r.wantAcks("forward ACK with a SACK block", 1, 1)
	r.batch(clientSegmentOpts(r.client, r.server, seq+4, r.ack, header.TCPFlagAck, ts, two))
	r.seq += 12
	r.waitHeld(2) // the gap is filled: an ordinary forward ACK again
	r.answer(t, "200 three")
	r.wantAcks("gap filled", 2, 2)
	r.tapped()
}

// TestDelayedAckRetransmission: a retransmission does not carry a held ACK
// (a client drops a segment below its window unread): the ACK goes first.
func TestDelayedAckRetransmission(t *testing.T) {
	const delay = 5 * time.Second // longer than the stack's retransmission timeout
	fam := groFamilies[0]
	r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
	r.quicken(0)
	// The server sends bytes the client never acknowledges; the client's
	// request then gets its ACK held, and the bytes are sent again.
	if _, err := r.conn.Write([]byte("unacknowledged")); err != nil {
		t.Fatal(err)
	}
	if got := r.nextReply(t, 2*time.Second); string(got.Payload()) != "unacknowledged" {
		t.Fatalf("got %q, want the server's bytes", got.Payload())
	}
	start := time.Now()
	r.batch(r.data([]byte("GET /2")))
	r.waitHeld(1)
	r.pureAck(delay/2, r.seq, "held ACK before a retransmission")
	if waited := time.Since(start); waited >= delay {
		t.Fatalf("the held ACK waited out its delay (%s): no retransmission came", waited)
	}
	if got := r.nextReply(t, 2*time.Second); string(got.Payload()) != "unacknowledged" {
		t.Fatalf("got %q (flags %s), want the retransmission", got.Payload(), got.Flags())
	}
	r.wantAcks("retransmission", 1, 0)
	r.tapped()
}

// TestDelayedAckReplaced: with a delay of at most maxReplacedHold, a second
// ACK of little more while one is held takes its place and deadline, and
// the answer carries both; one that makes more than a segment's worth
// unacknowledged leaves at once. (TestDelayedAck: with a longer delay, the
// second ACK leaves at once.)
func TestDelayedAckReplaced(t *testing.T) {
	const delay = 300 * time.Millisecond
	defer func(old time.Duration) { maxReplacedHold = old }(maxReplacedHold)
	maxReplacedHold = delay // read as the server starts
	fam := groFamilies[0]
	r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
	r.quicken(0)

	start := time.Now()
	r.batch(r.data([]byte("part 1")))
	r.waitHeld(1)
	r.batch(r.data([]byte("part 2")))
	waitUntil(t, 5*time.Second, "the second ACK held", func() (bool, string) {
		n := r.s.Stats().AcksReplaced
		return n == 1, fmt.Sprintf("%d replaced", n)
	})
	r.noReply(t, delay/10)
	if got := r.answer(t, "200 parts"); got.AckNumber() != r.seq {
		t.Fatalf("the answer to two segments acknowledges %d, want %d", got.AckNumber(), r.seq)
	}
	r.wantAcks("two small segments answered", 1, 1)

	// Unanswered, the replacing ACK leaves at the first one's deadline.
	start = time.Now()
	r.batch(r.data([]byte("part 3")))
	r.waitHeld(2)
	time.Sleep(delay / 2)
	r.batch(r.data([]byte("part 4")))
	r.pureAck(delay, r.seq, "the replacing ACK at the first one's deadline")
	if waited := time.Since(start); waited < delay || waited > delay+delay/2 {
		t.Fatalf("the replacing ACK left %v after the first segment, want about the delay (%v)", waited, delay)
	}
	r.wantAcks("unanswered pair", 2, 1)
	r.answer(t, "200 late") // quick again: the answer came within the delay of that ACK

	// More than a segment's worth unacknowledged: at once.
	r.batch(r.data([]byte("part 5")))
	r.waitHeld(3)
	r.batch(r.data(bytes.Repeat([]byte("c"), maxDelayedBytes)))
	r.pureAck(delay/2, r.seq, "a segment's worth more")
	r.wantAcks("a segment's worth more", 3, 2)
	if n := r.s.Stats().AcksReplaced; n != 2 {
		t.Fatalf("%d ACKs replaced, want 2", n)
	}
	r.tapped()
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

// replyRig is a server whose replies go nowhere, with TCP flows in its
// table, each taken for a quick one whose client's bytes are acknowledged
// up to 1, and each flow's pure ACK and 300-byte answer as its stack would
// write them. It drives the reply path alone, without a stack.
type replyRig struct {
	s     *Server
	flows []replyFlow
	buf   []byte
}

type replyFlow struct {
	flow      *Flow
	ack, data []byte
}

func newReplyRig(tb testing.TB, delay time.Duration, n int) *replyRig {
	r := &replyRig{s: &Server{flows: newFlowTable(1<<20, time.Hour, time.Hour), ret: &discardPath{}}, buf: make([]byte, maxDatagram)}
	r.s.cfg.MTU = DefaultMTU
	r.s.acks.init(r.s, delay)
	tb.Cleanup(r.s.acks.stop)
	gwlb := netip.MustParseAddrPort("127.0.0.2:40000")
	server := netip.MustParseAddrPort("198.18.9.9:443")
	for i := range n {
		c := netip.AddrPortFrom(netip.MustParseAddr("198.18.0.5"), uint16(10000+i))
		d := append(AppendHeader(nil, EtherTypeIPv4, 0, 7, 8, uint32(i), nil), clientSegment(c, server, 1, 1, header.TCPFlagAck, nil)...)
		h, _ := ParseHeader(d)
		p, _ := ParsePacket(d[h.Len:], h.Protocol)
		k := p.Key(h.Endpoint)
		f, _ := r.s.flows.Touch(&k, d[:h.Len], h, gwlb, 0)
		a := acksOf(f)
		a.sent, a.sentAck, a.quick = true, 1, true
		r.flows = append(r.flows, replyFlow{
			flow: f,
			ack:  clientSegment(server, c, 1, 1, header.TCPFlagAck, nil),
			data: clientSegment(server, c, 1, 1, header.TCPFlagAck|header.TCPFlagPsh, make([]byte, 300)),
		})
	}
	return r
}

// send has the reply path take pkt, acknowledging the client's bytes up
// to ack, at now.
func (r *replyRig) send(pkt []byte, ack uint32, now int64) {
	const innerOff = outerHeadroom + MaxGeneveHeader
	binary.BigEndian.PutUint32(pkt[header.IPv4MinimumSize+8:], ack)
	copy(r.buf[innerOff:], pkt)
	r.s.sendInner(7, r.buf, innerOff, len(pkt), now, nil)
}

// TestDelayedAckGeneration: when the timer comes to a flow's hold that a
// reply carried, it leaves the flow's later hold alone, even though both
// are in its queue (another flow's held ACK kept it from being emptied).
func TestDelayedAckGeneration(t *testing.T) {
	r := newReplyRig(t, time.Hour, 2) // the timer never fires on its own
	a, b := &r.flows[0], &r.flows[1]
	past := monoclock.Now() - int64(2*time.Hour)
	r.send(a.ack, 101, past)  // held
	r.send(b.ack, 101, past)  // held: the queue is not emptied below
	r.send(a.data, 101, past) // carries a's first hold
	now := monoclock.Now()
	r.send(a.ack, 201, now) // held again, its delay not run out
	if got := r.s.stats.packetsOut.Load(); got != 1 {
		t.Fatalf("%d datagrams sent before the timer, want the answer alone", got)
	}
	r.s.acks.fire()
	if got := r.s.stats.packetsOut.Load(); got != 2 {
		t.Fatalf("%d datagrams sent after the timer, want the answer and b's ACK", got)
	}
	if acksOf(a.flow).held.buf == nil {
		t.Fatal("a's second ACK left with its first hold's timer")
	}
	if acksOf(b.flow).held.buf != nil {
		t.Fatal("b's ACK is still held after its delay ran out")
	}
}
