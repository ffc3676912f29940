package capture

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// TestPlaintextCoalescesSmallWrites: a client that sends its request a
// byte per TLS record (each a FromClient call) gets as few synthesized
// packets as one that sends it whole: its bytes fill segments of an MSS,
// acknowledged once, instead of a segment and an ACK per byte (127
// synthesized packets per wire segment in the review's probe). The stream
// stays one valid TCP connection carrying exactly the bytes.
func TestPlaintextCoalescesSmallWrites(t *testing.T) {
	c := queuedCapture(1 << 15) // room for a packet per byte and its ACK, too
	s := c.OpenPlaintext(plainFlow)
	req := append([]byte("POST /upload HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 4000\r\n\r\n"), bytes.Repeat([]byte("x"), 4000)...)
	start := time.Now()
	for i := range req {
		s.FromClient(req[i : i+1])
	}
	// The flush timer may go off while the writes go on (a slow machine,
	// the race detector): a segment and an ACK each time.
	flushes := int(time.Since(start)/plainFlushAfter) + 1
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	s.FromServer(resp)
	s.Close()
	pkts := drain(t, c)
	c2s, s2c := checkStream(t, pkts, flipped(client), dest, plainMSS4)
	if !bytes.Equal(c2s, req) || !bytes.Equal(s2c, resp) {
		t.Fatalf("the stream carries %d and %d bytes, want %d and %d", len(c2s), len(s2c), len(req), len(resp))
	}
	// The handshake (3), the request in 3 segments and an ACK (4), the
	// response and its ACK (2), a FIN each way and their ACKs (4).
	if want := 13 + 2*flushes; len(pkts) > want || c.Stats().Plaintext.Dropped != 0 {
		t.Fatalf("%d bytes written a byte at a time made %d packets (%d dropped), want %d at most",
			len(req), len(pkts), c.Stats().Plaintext.Dropped, want)
	}
	t.Logf("%d bytes written a byte at a time: %d packets", len(req), len(pkts))
}

// TestPlaintextFlushesWhenQuiet: bytes short of a segment are not held
// until the stream ends: plainFlushAfter after they were written they are
// synthesized, with the other side's ACK.
func TestPlaintextFlushesWhenQuiet(t *testing.T) {
	c := queuedCapture(DefaultQueuePackets)
	s := c.OpenPlaintext(plainFlow)
	defer s.Close()
	req := []byte("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	s.FromClient(req[:10])
	s.FromClient(req[10:])
	deadline := time.Now().Add(5 * time.Second)
	for len(c.pcapQ.full) < 5 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	pkts := drain(t, c)
	if len(pkts) != 5 || !bytes.HasSuffix(pkts[3].data, req) || pkts[3].out || !pkts[4].out {
		t.Fatalf("%d packets queued after the client went quiet, want the handshake, the request in one segment, the ACK", len(pkts))
	}
}

// TestPlaintextShareOfQueueBounded: synthesized packets hold at most a
// quarter of an output's queue, so that a bumped client flooding its
// plaintext (or a large response while the writer lags) cannot crowd the
// wire packets of everyone else out of it: they still find room, and the
// synthesized packets beyond the share are dropped and counted.
func TestPlaintextShareOfQueueBounded(t *testing.T) {
	c := queuedCapture(DefaultQueuePackets) // nobody empties it
	s := c.OpenPlaintext(plainFlow)
	defer s.Close()
	s.FromServer(make([]byte, 10<<20)) // 7,000 segments and more
	if held := len(c.pcapQ.full); held > DefaultQueuePackets/4 {
		t.Fatalf("synthesized packets hold %d of %d slots, want a quarter at most", held, DefaultQueuePackets)
	}
	if c.Stats().Plaintext.Dropped == 0 {
		t.Fatal("no synthesized packet dropped beyond the share")
	}
	other := tcpPacket(t, netip.MustParseAddrPort("10.9.9.9:50000"), netip.MustParseAddrPort("198.51.100.1:80"), []byte("GET /evil HTTP/1.1\r\n\r\n"))
	p := parsed(t, other)
	// The stream's flush timer may drop a synthesized packet meanwhile:
	// only the wire packets' drops count here.
	wireDropped := func() uint64 { return c.pcapQ.dropped.Load() - c.plain.dropped.Load() }
	before := wireDropped()
	for range 1000 {
		c.Packet(epA, 1, false, time.Now().UnixNano(), p, other)
	}
	if d := wireDropped() - before; d != 0 {
		t.Fatalf("%d of 1000 wire packets dropped behind the synthesized ones", d)
	}
	// Written out, the slots are the share's again. The stream closed
	// first: its flush timer could otherwise queue a packet after the
	// queue was emptied (a full -race run saw one).
	s.Close()
	for len(c.pcapQ.full) > 0 {
		c.pcapQ.release(<-c.pcapQ.full)
	}
	if n := c.pcapQ.plain.Load(); n != 0 {
		t.Fatalf("%d slots still counted as synthesized after the queue emptied", n)
	}
}

// TestPlaintextMirrorDropsCounted: synthesized packets the mirror's queue
// had no room for are counted in plaintext.dropped as the pcap queue's are
// (docs/ids.md: "for synthesized packets, also in /stats
// capture.plaintext.dropped"): otherwise plaintext.dropped says 0 while
// the mirror's plaintext has gaps. TestPlaintextDropsCounted has no mirror
// queue.
func TestPlaintextMirrorDropsCounted(t *testing.T) {
	c := &Capture{plaintext: true, mirrorQ: newQueue(16), done: make(chan struct{})}
	s := c.OpenPlaintext(plainFlow)
	if s == nil {
		t.Fatal("no stream")
	}
	s.FromServer(make([]byte, 100_000))
	s.Close()
	st := c.Stats()
	if st.Plaintext.Dropped == 0 || st.Plaintext.Dropped != c.mirrorQ.dropped.Load() {
		t.Errorf("plaintext %+v, mirror queue dropped %d", st.Plaintext, c.mirrorQ.dropped.Load())
	}
}
