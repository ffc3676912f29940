package proxy

import (
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// owedNote matches a failed-dial owed note: how many, their bytes, the
// hosts named (owedDestRe each), the bytes not put to one, and how many
// more any one host may have got.
var (
	owedNote   = regexp.MustCompile(`(\d+) more failed dials from this client before this one, not recorded one by one: (\d+) bytes sent((?:[:,] (?:at least )?\d+ to [^ ,;()]+(?: \(ports \d+-\d+\))?)*)(?:, and (\d+) more)?(?:, at most (\d+) (?:more )?to any one host)?$`)
	owedDestRe = regexp.MustCompile(`(at least )?(\d+) to ([^ ,;()]+)(?: \(ports (\d+)-(\d+)\))?`)
)

// owedSaid is what an owed note says.
type owedSaid struct {
	n, bytes int64
	dests    map[string]int64     // the bytes said for each host named
	ports    map[string][2]uint16 // the range of ports said for each
	atLeast  bool                 // the bytes said are lower bounds
	// rest is the bytes put to no host named, and upTo the most more than
	// said (or, if not named, at all) any host got.
	rest, upTo int64
}

// parseOwed reads the owed note ending errText, if there is one, and
// checks that its numbers add up.
func parseOwed(t *testing.T, errText string) (owedSaid, bool) {
	t.Helper()
	m := owedNote.FindStringSubmatch(errText)
	if m == nil {
		return owedSaid{}, false
	}
	var o owedSaid
	o.n, _ = strconv.ParseInt(m[1], 10, 64)
	o.bytes, _ = strconv.ParseInt(m[2], 10, 64)
	o.dests, o.ports = map[string]int64{}, map[string][2]uint16{}
	var sum int64
	for _, d := range owedDestRe.FindAllStringSubmatch(m[3], -1) {
		b, _ := strconv.ParseInt(d[2], 10, 64)
		host := d[3]
		var lo, hi uint64
		if d[4] != "" {
			lo, _ = strconv.ParseUint(d[4], 10, 16)
			hi, _ = strconv.ParseUint(d[5], 10, 16)
		} else if ap, err := netip.ParseAddrPort(d[3]); err == nil {
			host, lo, hi = ap.Addr().String(), uint64(ap.Port()), uint64(ap.Port())
		} else {
			t.Errorf("owed note %q: destination %q neither host:port nor host (ports)", m[0], d[3])
		}
		o.dests[host] = b
		o.ports[host] = [2]uint16{uint16(lo), uint16(hi)}
		sum += b
		o.atLeast = o.atLeast || d[1] != ""
	}
	o.rest, _ = strconv.ParseInt(m[4], 10, 64)
	o.upTo, _ = strconv.ParseInt(m[5], 10, 64)
	if len(o.dests) == 0 {
		o.rest = o.bytes
	}
	cut := m[5] != ""
	if sum+o.rest != o.bytes || o.atLeast != (cut && len(o.dests) > 0) || cut != (o.rest > 0) || (m[4] != "") != (cut && len(o.dests) > 0) {
		t.Errorf("owed note %q: its hosts' %d bytes and the other %d do not make its %d, or its words do not go together", m[0], sum, o.rest, o.bytes)
	}
	return o, true
}

// TestDialErrorOwedNoteSaysBytesAndWhere (review rev32c F1): a client that
// emptied its failed-dial bucket (SYNs to one host) then sends datagrams of
// up to 512 bytes each to closed ports of another host: they reach that
// host, and were recorded nowhere, the next recorded failed dial's note
// saying only how many went before it, and a client that stopped had even
// that dropped once its bucket refilled. Now the last such flow is held
// and written once the bucket has a token again, with no further dial of
// the client's, its note saying how many went unrecorded before it, the
// bytes they sent and the last one's destination; the counters match.
func TestDialErrorOwedNoteSaysBytesAndWhere(t *testing.T) {
	p, _, recs := udpProxy(t, "policy:\n  default: allow\n  destination_check: off\n", nil)
	dest := closedUDPPort(t)
	const n, size = 30, dialErrorBucketBytes
	first := netip.MustParseAddrPort("198.18.0.7:41000")
	k := clientShareKey(netstack.FlowInfo{Endpoint: 7, Client: first, Dest: dest})
	emptyDialErrorBucket(p, netstack.FlowInfo{Endpoint: 7, Client: first, Dest: dest})
	st0 := p.Stats()
	failedFlows(t, p, first, dest, n, size)
	// Each flow's end is counted in udp_dial_errors before its record is
	// decided: the last one held puts the one before among the unrecorded.
	for end := time.Now().Add(10 * time.Second); (p.Stats().UDPDialErrors-st0.UDPDialErrors < n || p.Stats().DialErrorsUnrecorded-st0.DialErrorsUnrecorded < n-1) && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // anything more it made shows by now
	st := p.Stats()
	if d := st.UDPDialErrors - st0.UDPDialErrors; d != n {
		t.Fatalf("udp_dial_errors +%d, want +%d", d, n)
	}
	unrecorded, unrecordedBytes := st.DialErrorsUnrecorded-st0.DialErrorsUnrecorded, st.DialErrorsUnrecordedBytes-st0.DialErrorsUnrecordedBytes
	if got := recs.parse(t); len(got) != 0 || unrecorded != n-1 || unrecordedBytes != (n-1)*size || !dialErrorHeld(p, k) {
		t.Fatalf("bucket empty: %d records, dial_errors_unrecorded +%d, dial_errors_unrecorded_bytes +%d; want none, +%d, +%d and the last flow held", len(got), unrecorded, unrecordedBytes, n-1, (n-1)*size)
	}
	// The client makes no more failed dials; its bucket refills.
	refillDialErrorBucket(p, k)
	r := recs.records(t, 1)[0]
	o, ok := parseOwed(t, r.Error)
	if !ok {
		t.Fatalf("the held flow's record: kind %s bytes_out %d error %q; want the note of the flows before it", r.Kind, r.BytesOut, r.Error)
	}
	said, saidBytes := int(o.n), o.bytes
	if r.Kind != "udp" || r.Result != "refused" || r.DestIP != dest.Addr().String() || r.BytesOut != size ||
		said != n-1 || saidBytes != (n-1)*size || len(o.dests) != 1 || o.dests[dest.Addr().String()] != (n-1)*size || o.ports[dest.Addr().String()] != [2]uint16{dest.Port(), dest.Port()} || o.atLeast {
		t.Errorf("record kind %s result %s dest %s bytes_out %d, error %q; want udp refused to %s, bytes_out %d, %d more with %d bytes, all of them to %s",
			r.Kind, r.Result, r.DestIP, r.BytesOut, r.Error, dest.Addr(), size, n-1, (n-1)*size, dest)
	}
	// The records and the note account for every byte sent.
	if total := r.BytesOut + saidBytes; total != n*size {
		t.Errorf("records and notes say %d bytes, the client sent %d", total, n*size)
	}
	st = p.Stats()
	if d := st.DialErrorsUnrecorded - st0.DialErrorsUnrecorded; d != n-1 || st.DialErrorsUnrecordedBytes-st0.DialErrorsUnrecordedBytes != uint64(saidBytes) {
		t.Errorf("dial_errors_unrecorded +%d, _bytes +%d; want the note's %d, %d", d, st.DialErrorsUnrecordedBytes-st0.DialErrorsUnrecordedBytes, said, saidBytes)
	}
	time.Sleep(200 * time.Millisecond) // nothing else comes
	if got := recs.parse(t); len(got) != 1 {
		t.Errorf("%d records, want the held flow's alone", len(got))
	}
}

// TestDialErrorHeldWrittenAtClose: a failed dial held for its client's
// empty bucket is written as the proxy closes, with the note of those
// before it, not lost with the process before its timer; and one that
// fails after the close is recorded at once, not held.
func TestDialErrorHeldWrittenAtClose(t *testing.T) {
	p, _, recs := udpProxy(t, "policy:\n  default: allow\n  destination_check: off\n", nil)
	dest := closedUDPPort(t)
	const n, size = 3, 100
	first := netip.MustParseAddrPort("198.18.0.9:42000")
	flow := netstack.FlowInfo{Endpoint: 7, Client: first, Dest: dest}
	k := clientShareKey(flow)
	emptyDialErrorBucket(p, flow)
	failedFlows(t, p, first, dest, n, size)
	for end := time.Now().Add(10 * time.Second); !dialErrorHeld(p, k) || p.Stats().DialErrorsUnrecorded < n-1; {
		if time.Now().After(end) {
			t.Fatalf("the last flow is not held (dial_errors_unrecorded %d)", p.Stats().DialErrorsUnrecorded)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := recs.parse(t); len(got) != 0 {
		t.Fatalf("%d records with the bucket empty, want none yet", len(got))
	}
	p.Close() // the bucket is still empty: only the close writes it
	r := recs.records(t, 1)[0]
	o, ok := parseOwed(t, r.Error)
	if r.Kind != "udp" || r.Result != "refused" || r.BytesOut != size || !ok || o.n != n-1 || o.bytes != (n-1)*size || o.dests[dest.Addr().String()] != (n-1)*size {
		t.Fatalf("record at close: kind %s result %s bytes_out %d error %q; want the held udp flow, refused, %d bytes, noting %d more with %d bytes",
			r.Kind, r.Result, r.BytesOut, r.Error, size, n-1, (n-1)*size)
	}
	if dialErrorHeld(p, k) {
		t.Error("a flow is still held after the close")
	}
	// A failed dial after the close (a flow the stacks' close ended) is
	// recorded at once, whatever the bucket holds.
	late := r
	late.Error = ""
	p.finishDialError(&late, time.Now(), k)
	if got := recs.records(t, 2); got[1].Error != "" || dialErrorHeld(p, k) {
		t.Errorf("failed dial after the close: error %q, held %v; want recorded at once, no note", got[1].Error, dialErrorHeld(p, k))
	}
}

// failedFlows starts n UDP flows one after another from first's address
// (ports first's and up) to dest, a closed port, each opened by a datagram
// of size bytes, and waits for each to end; they are closed when t ends.
func failedFlows(t *testing.T, p *Proxy, first, dest netip.AddrPort, n, size int) {
	t.Helper()
	for i := range n {
		client := netip.AddrPortFrom(first.Addr(), first.Port()+uint16(i))
		c, done := startFlow(p, client, dest, make([]byte, size))
		t.Cleanup(func() { c.Close() })
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("flow %d did not end", i)
		}
	}
}
