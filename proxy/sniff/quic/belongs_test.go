package quic

import (
	"bytes"
	"strings"
	"testing"
)

// TestBelongs plays a client that, once its first connection on a flow has
// been decided, tries to start another on the same flow: the relay must be
// able to tell those datagrams from the first connection's own.
func TestBelongs(t *testing.T) {
	ch := bigClientHello(t, 1500)
	frames := splitCrypto(ch, 1000)
	serverCID := []byte{0xaa, 0xbb, 0xcc, 0xdd}
	otherDCID := []byte{9, 10, 11, 12, 13, 14, 15, 16}
	d1 := packet{dcid: testDCID, pn: 0, payload: frames[0], padTo: 1200}.seal(t)
	d2 := packet{dcid: testDCID, pn: 1, payload: frames[1], padTo: 1200}.seal(t)

	var a Assembler
	if a.Belongs(d1) {
		t.Fatal("Belongs before the ClientHello is complete")
	}
	// Nor while it is under way: no datagram belongs to a connection not
	// yet decided, not even one that repeats what was read (a relay asking
	// then would let datagrams past a decision still to come).
	var part Assembler
	if _, done, err := part.Add(d1); done || err != nil {
		t.Fatalf("the first of two datagrams: done %v, %v", done, err)
	}
	for _, d := range [][]byte{d1, append([]byte{0x40}, serverCID...)} {
		if part.Belongs(d) {
			t.Errorf("datagram %x...: Belongs with half a ClientHello read", d[:5])
		}
	}
	if i, hello := feed(t, &a, [][]byte{d1, d2}); i != 1 || hello.ServerName != "example.com" {
		t.Fatalf("done at %d, %q", i, hello.ServerName)
	}
	other := bigClientHello(t, 1600)
	tests := []struct {
		name string
		d    []byte
		want bool
	}{
		{"retransmitted first datagram", d1, true},
		{"retransmission under a new packet number", packet{dcid: testDCID, pn: 7, payload: frames[0], padTo: 1200}.seal(t), true},
		{"ACK to the server's connection ID, original keys", packet{dcid: serverCID, keyDCID: testDCID, pn: 2, payload: ackFrame(0, 0, 0, false), padTo: 1200}.seal(t), true},
		{"short header", append([]byte{0x40}, serverCID...), true},
		{"handshake packet", packet{typ: typeHandshake, dcid: serverCID, keyDCID: testDCID, pn: 0, payload: pingFrame(), padTo: 1200}.seal(t), true},
		{"new connection: its own DCID and keys", packet{dcid: otherDCID, pn: 0, payload: cryptoFrameBytes(0, other), padTo: 1200}.seal(t), false},
		{"after a Retry: the same ClientHello under the Retry's keys", packet{dcid: serverCID, token: []byte("retry token"), pn: 2, payload: frames[0], padTo: 1200}.seal(t), true},
		{"new connection: the server's CID as its own DCID", packet{dcid: serverCID, pn: 0, payload: cryptoFrameBytes(0, other), padTo: 1200}.seal(t), false},
		{"another ClientHello under the old keys", packet{dcid: testDCID, pn: 3, payload: cryptoFrameBytes(0, other[:1000]), padTo: 1200}.seal(t), false},
		{"CRYPTO data past the ClientHello", packet{dcid: testDCID, pn: 4, payload: cryptoFrameBytes(uint64(len(ch)), []byte("more")), padTo: 1200}.seal(t), false},
		{"new connection coalesced behind an ACK", concat(
			packet{dcid: testDCID, pn: 5, payload: ackFrame(0, 0, 0, false)}.seal(t),
			packet{dcid: otherDCID, pn: 0, payload: cryptoFrameBytes(0, other[:1000]), padTo: 1200}.seal(t)), false},
		{"unparsable long header", []byte{0xc0, 0, 0, 0, 1, 200}, false},
		{"unknown version", concat([]byte{0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8}, otherDCID, []byte{0}, bytes.Repeat([]byte{0}, 1200)), false},
	}
	for _, tc := range tests {
		if got := a.Belongs(tc.d); got != tc.want {
			t.Errorf("%s: Belongs = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A refused datagram changes nothing: the connection's own still pass.
	if !a.Belongs(d2) {
		t.Error("the connection's own datagram refused after refusals")
	}
}

// TestBelongsKeepsNoLargeScratch: a decided flow keeps its Assembler for
// its lifetime, so it must not keep scratch space the size of the largest
// datagram it ever read (one 60 KB Initial, a datagram reassembled from IP
// fragments, would otherwise stay with an idle flow), and neither may the
// pool the scratch space goes back to, nor may it keep the flow's bytes
// alive: what the scratch found points into them.
func TestBelongsKeepsNoLargeScratch(t *testing.T) {
	ch := rfcClientHello(t)
	var a Assembler
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch))); !done || err != nil {
		t.Fatal(done, err)
	}
	// Its first byte, retransmitted 10,000 times over: many frames.
	big := packet{dcid: testDCID, pn: 1, payload: bytes.Repeat(cryptoFrameBytes(0, ch[:1]), 10000), padTo: 60000}.seal(t)
	if !a.Belongs(big) {
		t.Fatal("the connection's own retransmission does not belong")
	}
	// What Belongs does with its scratch, seen before the pool takes it.
	sc := getScratch()
	sc.saved = append(sc.saved[:0], a.stream.chunks...)
	if _, _, err := a.read(big, sc); err != nil || len(sc.frames) != 10000 {
		t.Fatalf("read: %v, %d frames", err, len(sc.frames))
	}
	sc.reset()
	if c := cap(sc.buf); c > maxPooledScratch {
		t.Errorf("after one %d-byte datagram, the pool keeps a %d-byte scratch buffer", len(big), c)
	}
	if c := cap(sc.frames); c > maxPooledFrames {
		t.Errorf("after one %d-byte datagram, the pool keeps room for %d frames", len(big), c)
	}
	// A usual one: its scratch space is kept for the next, and nothing
	// in it points at the flow's bytes.
	small := packet{dcid: testDCID, pn: 2, payload: concat(ackFrame(1, 0, 1, false), cryptoFrameBytes(0, ch[:100])), padTo: 1200}.seal(t)
	sc.saved = append(sc.saved[:0], a.stream.chunks...)
	if _, _, err := a.read(small, sc); err != nil || len(sc.frames) != 1 {
		t.Fatalf("read: %v, %d frames", err, len(sc.frames))
	}
	sc.reset()
	if cap(sc.buf) == 0 || cap(sc.frames) == 0 {
		t.Errorf("after a 1,200-byte Initial: scratch space of %d bytes and %d frames kept", cap(sc.buf), cap(sc.frames))
	}
	for i, f := range sc.frames[:cap(sc.frames)] {
		if f.data != nil {
			t.Fatalf("frame %d kept: it points into the datagram read", i)
		}
	}
	for i, c := range sc.saved[:cap(sc.saved)] {
		if c.data != nil {
			t.Fatalf("saved chunk %d kept: it points at the flow's CRYPTO bytes", i)
		}
	}
	if !a.Belongs(small) {
		t.Error("the connection's own retransmission does not belong")
	}
}

// TestBelongsAfterRetry: after a Retry, the client protects its Initials
// with keys of the Retry's connection ID (RFC 9001 §5.2), also once it
// addresses the server's own connection ID. Its ACK to the server, with its
// Handshake packets (its Finished) coalesced, belongs: dropping it would
// stall the handshake until the client retransmits.
func TestBelongsAfterRetry(t *testing.T) {
	ch := rfcClientHello(t)
	var a Assembler
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch))); !done || err != nil {
		t.Fatal(done, err)
	}
	retryCID := []byte{0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4}
	serverCID := []byte{0x55, 0x66, 0x77, 0x88}
	if !a.Belongs(packet{dcid: retryCID, token: []byte("token"), pn: 1, payload: cryptoFrameBytes(0, ch), padTo: 1200}.seal(t)) {
		t.Fatal("the ClientHello again under the Retry's keys does not belong")
	}
	ack := concat(
		packet{dcid: serverCID, keyDCID: retryCID, token: []byte("token"), pn: 2, payload: ackFrame(0, 0, 0, false)}.seal(t),
		rawLong(t, Version1, typeHandshake, serverCID, bytes.Repeat([]byte{0xee}, 1200)))
	if !a.Belongs(ack) {
		t.Error("the ACK to the server's connection ID under the Retry's keys does not belong")
	}
	// Keys it opens with do not make another ClientHello belong.
	other := bigClientHello(t, 1600)
	if a.Belongs(packet{dcid: serverCID, keyDCID: retryCID, pn: 3, payload: cryptoFrameBytes(0, other[:1000]), padTo: 1200}.seal(t)) {
		t.Error("another ClientHello under the Retry's keys belongs")
	}
}

// decidedWithRetry returns an Assembler that has read the RFC ClientHello
// under testDCID and then, after a Retry to retryCID, the same ClientHello
// again: the two connection IDs of a real client's flow, each a trial open
// for every Initial that follows.
func decidedWithRetry(t *testing.T, retryCID []byte) *Assembler {
	t.Helper()
	ch := rfcClientHello(t)
	a := new(Assembler)
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch))); !done || err != nil {
		t.Fatal(done, err)
	}
	if !a.Belongs(packet{dcid: retryCID, token: []byte("token"), pn: 0, payload: cryptoFrameBytes(0, ch), padTo: 1200}.seal(t)) {
		t.Fatal("the ClientHello again under the Retry's keys does not belong")
	}
	return a
}

// TestBelongsCoalescedBound: a client coalesces at most one Initial, one
// 0-RTT and one Handshake packet, and a 1-RTT one after them (RFC 9000
// §12.2). A datagram of many small Initials of the flow, each of which
// belongs on its own, made Belongs open each under every key of the flow,
// over 200 µs per 1,344-byte datagram on the packet path: more than three
// long-header packets are refused before any is decrypted.
func TestBelongsCoalescedBound(t *testing.T) {
	serverCID := []byte{0x55, 0x66, 0x77, 0x88}
	a := decidedWithRetry(t, []byte{0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4})
	ack := func(pn uint64) []byte {
		return packet{dcid: testDCID, pn: pn, payload: ackFrame(0, 0, 0, false)}.seal(t)
	}
	var flood []byte
	for pn := uint64(10); len(flood) < 1344; pn++ {
		flood = append(flood, packet{dcid: testDCID, pn: pn, payload: pingFrame()}.seal(t)...)
	}
	junk := bytes.Repeat([]byte{0xee}, 64)
	short := append([]byte{0x40}, serverCID...)
	tests := []struct {
		name string
		d    []byte
		want bool
	}{
		{"Initial, Handshake and 1-RTT", concat(ack(20), rawLong(t, Version1, typeHandshake, serverCID, junk), short, bytes.Repeat([]byte{0}, 1100)), true},
		{"Initial, 0-RTT and Handshake", concat(ack(21), rawLong(t, Version1, typeZeroRTT, testDCID, junk), rawLong(t, Version1, typeHandshake, serverCID, bytes.Repeat([]byte{0xee}, 1100))), true},
		{"many coalesced PING Initials", flood, false},
		{"two Initials, 0-RTT and Handshake", concat(ack(22), ack(23), rawLong(t, Version1, typeZeroRTT, testDCID, junk), rawLong(t, Version1, typeHandshake, serverCID, bytes.Repeat([]byte{0xee}, 1100))), false},
		{"Initial and four Handshake packets", concat(ack(24), bytes.Repeat(rawLong(t, Version1, typeHandshake, serverCID, bytes.Repeat([]byte{0xee}, 300)), 4)), false},
	}
	for _, tc := range tests {
		if got := a.Belongs(tc.d); got != tc.want {
			t.Errorf("%s (%d bytes): Belongs = %v, want %v", tc.name, len(tc.d), got, tc.want)
		}
	}
	// The same bound while the ClientHello is read.
	var b Assembler
	d := concat(initialDatagram(t, 0, cryptoFrameBytes(0, rfcClientHello(t))), flood)
	if err := wantErr(t, &b, d, ErrMalformed); !strings.Contains(err.Error(), "coalesced") {
		t.Errorf("Add: %v", err)
	}
}

// TestBelongsNoNewConnIDAfterDecision: once the flow is decided, every
// connection ID kept is one more trial open for each of its Initials, and
// a client adds one only after a Retry, in an Initial that carries the
// Retry's token and its ClientHello again. A PING under a new connection ID
// was kept before (up to four), which multiplied the cost of every datagram
// after it.
func TestBelongsNoNewConnIDAfterDecision(t *testing.T) {
	ch := rfcClientHello(t)
	var a Assembler
	if _, done, err := a.Add(initialDatagram(t, 0, cryptoFrameBytes(0, ch))); !done || err != nil {
		t.Fatal(done, err)
	}
	cid := func(i byte) []byte { return []byte{0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, i} }
	tests := []struct {
		name string
		d    []byte
		want bool
	}{
		{"PING under a new connection ID", packet{dcid: cid(1), pn: 0, payload: pingFrame(), padTo: 1200}.seal(t), false},
		{"PING with a token under a new connection ID", packet{dcid: cid(2), token: []byte("token"), pn: 0, payload: pingFrame(), padTo: 1200}.seal(t), false},
		{"the ClientHello without a token under a new connection ID", packet{dcid: cid(3), pn: 0, payload: cryptoFrameBytes(0, ch), padTo: 1200}.seal(t), false},
		{"after a Retry: the ClientHello with its token", packet{dcid: cid(4), token: []byte("token"), pn: 0, payload: cryptoFrameBytes(0, ch), padTo: 1200}.seal(t), true},
		{"its ACK to the server's connection ID", packet{dcid: []byte{0x55, 0x66}, keyDCID: cid(4), token: []byte("token"), pn: 1, payload: ackFrame(0, 0, 0, false), padTo: 1200}.seal(t), true},
		{"a second Retry's", packet{dcid: cid(5), token: []byte("token"), pn: 0, payload: cryptoFrameBytes(0, ch), padTo: 1200}.seal(t), false},
		{"the first connection ID's keys still", packet{dcid: testDCID, pn: 1, payload: ackFrame(0, 0, 0, false), padTo: 1200}.seal(t), true},
	}
	for _, tc := range tests {
		if got := a.Belongs(tc.d); got != tc.want {
			t.Errorf("%s: Belongs = %v, want %v", tc.name, got, tc.want)
		}
	}
	if a.nknown != 2 {
		t.Errorf("%d connection IDs kept, want the first and the Retry's", a.nknown)
	}
}

// TestBelongsTrialOpensAllocateNothing: every Initial of a flow with two
// connection IDs is opened under three readings, and at least two fail by
// design. Each failure built an error with fmt, most of Belongs' cost on
// the packet path; a datagram no key opens is refused without one either.
func TestBelongsTrialOpensAllocateNothing(t *testing.T) {
	if raceEnabled {
		// Its scratch comes from a sync.Pool, which under the race
		// detector drops a quarter of what it is given on purpose.
		t.Skip("the race detector makes the scratch pool allocate")
	}
	retryCID := []byte{0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4}
	a := decidedWithRetry(t, retryCID)
	serverCID := []byte{0x55, 0x66, 0x77, 0x88}
	opens := packet{dcid: serverCID, keyDCID: retryCID, token: []byte("token"), pn: 1, payload: ackFrame(0, 0, 0, false), padTo: 1200}.seal(t)
	none := bytes.Clone(opens)
	none[len(none)-1] ^= 1 // the tag: no key opens it
	for _, tc := range []struct {
		name string
		d    []byte
		want bool
	}{{"opens under one key of three", opens, true}, {"opens under none", none, false}} {
		if got := a.Belongs(tc.d); got != tc.want {
			t.Fatalf("%s: Belongs = %v, want %v", tc.name, got, tc.want)
		}
		if n := testing.AllocsPerRun(100, func() { a.Belongs(tc.d) }); n != 0 {
			t.Errorf("%s: %v allocations per Belongs", tc.name, n)
		}
	}
}
