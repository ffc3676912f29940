package proxy

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// bytesNaming sums what the records and owed notes in rs say reached d:
// the bytes_out of those to d, and the bytes each note puts to its host
// (every flow to it went to d's port here).
func bytesNaming(t *testing.T, rs []records.Record, d netip.AddrPort) (said int64, atLeast bool) {
	t.Helper()
	for _, r := range rs {
		if r.DestIP == d.Addr().String() && r.DestPort == d.Port() {
			said += r.BytesOut
		}
		if o, ok := parseOwed(t, r.Error); ok {
			said += o.dests[d.Addr().String()]
			atLeast = atLeast || o.atLeast
			if p, ok := o.ports[d.Addr().String()]; ok && (d.Port() < p[0] || d.Port() > p[1]) {
				t.Errorf("note %q: %s's ports said %d-%d, the flows went to %d", r.Error, d.Addr(), p[0], p[1], d.Port())
			}
		}
	}
	return said, atLeast
}

// TestDialErrorOwedNoteNamesWhereBytesWent (review rev33b F1): the owed
// note named only the last unrecorded dial's destination, which the client
// chooses. A client whose failed-dial bucket is empty sends 40 flows of
// 512 bytes to closed ports of host B, then two to host A: the held
// record is A's, its note said "41 more ...: 20992 bytes sent, the last to
// A", and no record or note named B, which got 20,480 of those bytes. Now
// the note puts the bytes to the destinations that got them: B with its
// 20,480, A with 512.
func TestDialErrorOwedNoteNamesWhereBytesWent(t *testing.T) {
	p, _, recs := udpProxy(t, "policy:\n  default: allow\n  destination_check: off\n", nil)
	a := closedUDPPort(t)
	b := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), closedUDPPort(t).Port())
	const k, size = 40, dialErrorBucketBytes
	first := netip.MustParseAddrPort("198.18.0.7:41000")
	flow := netstack.FlowInfo{Endpoint: 7, Client: first, Dest: a}
	key := clientShareKey(flow)
	emptyDialErrorBucket(p, flow)
	st0 := p.Stats()
	failedFlows(t, p, first, b, k, size)
	failedFlows(t, p, netip.AddrPortFrom(first.Addr(), first.Port()+k), a, 2, size)
	for end := time.Now().Add(10 * time.Second); p.Stats().DialErrorsUnrecorded-st0.DialErrorsUnrecorded < k+1 && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	refillDialErrorBucket(p, key)
	// The held flow is the last whose failed dial was decided, A's as a
	// rule; whichever it is, its record and its note put the bytes where
	// they went, exactly (two destinations).
	rs := recs.records(t, 1)
	r := rs[0]
	o, ok := parseOwed(t, r.Error)
	if !ok || r.BytesOut != size || o.n != k+1 || o.bytes != (k+1)*size || len(o.dests) != 2 || o.atLeast {
		t.Fatalf("record to %s:%d bytes_out %d error %q; want the held flow's, %d bytes, noting %d more with %d bytes to two destinations, exactly", r.DestIP, r.DestPort, r.BytesOut, r.Error, size, k+1, (k+1)*size)
	}
	if toB, _ := bytesNaming(t, rs, b); toB != k*size {
		t.Errorf("record to %s:%d, note %q: %d bytes put to B (%s), which got %d", r.DestIP, r.DestPort, r.Error, toB, b, k*size)
	}
	if toA, _ := bytesNaming(t, rs, a); toA != 2*size {
		t.Errorf("record to %s:%d, note %q: %d bytes put to A (%s), which got %d", r.DestIP, r.DestPort, r.Error, toA, a, 2*size)
	}
	st := p.Stats()
	if st.DialErrorsUnrecorded-st0.DialErrorsUnrecorded != uint64(o.n) || st.DialErrorsUnrecordedBytes-st0.DialErrorsUnrecordedBytes != uint64(o.bytes) {
		t.Errorf("dial_errors_unrecorded +%d, _bytes +%d; the note says %d, %d", st.DialErrorsUnrecorded-st0.DialErrorsUnrecorded, st.DialErrorsUnrecordedBytes-st0.DialErrorsUnrecordedBytes, o.n, o.bytes)
	}
}

// TestDialErrorOwedNotesNameBAtTheBucketsRate (review rev33b F1, its
// second probe): the bucket refills at its own rate; in each of 6 windows
// the client sends 20 flows of 512 bytes to B at once, then two to A, then
// pauses 35 ms. The records were A's, noting "21 more ..., the last to
// A": B was named in 1 of 9. Now the records and notes put to B every
// byte it got, exactly (no note has more than two destinations to name).
func TestDialErrorOwedNotesNameBAtTheBucketsRate(t *testing.T) {
	p, _, recs := udpProxy(t, "policy:\n  default: allow\n  destination_check: off\n", nil)
	a := closedUDPPort(t)
	b := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), closedUDPPort(t).Port())
	const k, size, windows = 20, dialErrorBucketBytes, 6
	first := netip.MustParseAddrPort("198.18.0.8:20000")
	flow := netstack.FlowInfo{Endpoint: 7, Client: first, Dest: a}
	emptyDialErrorBucket(p, flow)
	refillDialErrorBucket(p, clientShareKey(flow)) // empty, refilling at 20 a second from now
	st0 := p.Stats()
	port := first.Port()
	for range windows {
		var wg sync.WaitGroup
		for range k {
			c, done := startFlow(p, netip.AddrPortFrom(first.Addr(), port), b, make([]byte, size))
			port++
			t.Cleanup(func() { c.Close() })
			wg.Go(func() { <-done })
		}
		wg.Wait()
		failedFlows(t, p, netip.AddrPortFrom(first.Addr(), port), a, 2, size)
		port += 2
		time.Sleep(35 * time.Millisecond)
	}
	// Every failed dial is recorded or noted once the last held one is
	// written.
	const all = windows * (k + 2)
	var rs []records.Record
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		rs = recs.parse(t)
		var noted int64
		for _, r := range rs {
			if o, ok := parseOwed(t, r.Error); ok {
				noted += o.n
			}
		}
		if int64(len(rs))+noted == all || time.Now().After(end) {
			break
		}
	}
	toB, atLeast := bytesNaming(t, rs, b)
	toA, _ := bytesNaming(t, rs, a)
	st := p.Stats()
	t.Logf("%d records; dial_errors_unrecorded +%d (%d bytes); said to B %d of %d, to A %d of %d",
		len(rs), st.DialErrorsUnrecorded-st0.DialErrorsUnrecorded, st.DialErrorsUnrecordedBytes-st0.DialErrorsUnrecordedBytes, toB, windows*k*size, toA, windows*2*size)
	if toB != windows*k*size || toA != windows*2*size || atLeast {
		for _, r := range rs {
			t.Logf("  dest %s:%d bytes_out %d error %q", r.DestIP, r.DestPort, r.BytesOut, r.Error)
		}
		t.Errorf("the records and notes put %d bytes to B and %d to A (lower bounds: %v); B got %d, A %d", toB, toA, atLeast, windows*k*size, windows*2*size)
	}
}
