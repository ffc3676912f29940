package cwlogs

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

func srcOf(addr string) records.Source {
	return records.Source{Endpoint: 1, Client: netip.MustParseAddr(addr)}
}

// checkFairQueue verifies the queue's bookkeeping: every source's chain
// holds its live entries in queue order and what they cost, the heap is a
// max-heap, and the front is live.
func checkFairQueue(t *testing.T, f *fairQueue) {
	t.Helper()
	live := 0
	type tally struct {
		n     int
		bytes int64
		last  uint64
	}
	seen := map[*source]*tally{}
	for i := range f.q.len() {
		e := f.q.at(i)
		if e.src == nil {
			if i == 0 {
				t.Fatal("a tombstone at the front")
			}
			continue
		}
		live++
		seq := f.q.first + uint64(i)
		tl := seen[e.src]
		if tl == nil {
			tl = &tally{}
			seen[e.src] = tl
			if e.src.head != seq {
				t.Fatalf("source %v starts at %d, its first entry is %d", e.src.key, e.src.head, seq)
			}
		} else if f.q.seq(tl.last).next != seq {
			t.Fatalf("source %v: entry %d links to %d, not %d", e.src.key, tl.last, f.q.seq(tl.last).next, seq)
		}
		tl.n++
		tl.bytes += cost(e.msg)
		tl.last = seq
	}
	if live != f.live || len(seen) != len(f.sources) || len(f.heap) != len(f.sources) {
		t.Fatalf("live %d (counted %d), sources %d (seen %d), heap %d", f.live, live, len(f.sources), len(seen), len(f.heap))
	}
	for s, tl := range seen {
		if s.n != tl.n || s.bytes != tl.bytes || s.tail != tl.last || f.sources[s.key] != s {
			t.Fatalf("source %v: n %d bytes %d tail %d, counted %d, %d, %d", s.key, s.n, s.bytes, s.tail, tl.n, tl.bytes, tl.last)
		}
	}
	for i, s := range f.heap {
		if s.idx != i || i > 0 && f.heap[(i-1)/2].bytes < s.bytes {
			t.Fatalf("heap broken at %d", i)
		}
	}
}

// TestFairQueueEvictsLargestSource: eviction takes the oldest entry of the
// source holding the most bytes, entries leave in the order they came, and
// the tombstones eviction leaves behind stay bounded while the front does
// not move (a stalled CloudWatch), compaction keeping every chain intact.
func TestFairQueueEvictsLargestSource(t *testing.T) {
	var f fairQueue
	big, small, own := srcOf("10.0.0.9"), srcOf("10.0.0.5"), records.Source{}
	push := func(src records.Source, i, size int) {
		e := entry{ts: int64(i), msg: string(line(0, i, size))}
		f.push(e, src, cost(e.msg))
	}
	// Interleave: the small sources' entries are at the front.
	push(small, 0, 50)
	push(own, 1, 50)
	for i := 2; i < 10; i++ {
		push(big, i, 1000)
	}
	push(small, 10, 50)
	checkFairQueue(t, &f)
	for want := 2; want < 6; want++ {
		if e := f.evict(); e.ts != int64(want) {
			t.Fatalf("evicted entry %d, want %d (the big source's oldest)", e.ts, want)
		}
		checkFairQueue(t, &f)
	}
	// The small source now holds the most: its oldest goes.
	for range 4 {
		f.evict()
	}
	checkFairQueue(t, &f)
	if e := f.evict(); e.ts != 0 { // the small source's oldest
		t.Fatalf("evicted %d", e.ts)
	}
	checkFairQueue(t, &f)
	for f.len() > 0 {
		f.pop()
	}
	checkFairQueue(t, &f)

	// A stalled front: one old entry of a small source stays queued while
	// a flood evicts its own entries for 100,000 more.
	push(small, 0, 50)
	for i := 1; i < 100000; i++ {
		push(big, i, 100)
		if f.len() > 500 {
			f.evict()
		}
		if slots := f.q.len(); slots > 2*f.len()+compactMin {
			t.Fatalf("%d slots for %d live entries: tombstones unbounded", slots, f.len())
		}
	}
	checkFairQueue(t, &f)
	prev := int64(-1)
	for f.len() > 0 {
		e := f.pop()
		if e.ts <= prev {
			t.Fatalf("popped %d after %d", e.ts, prev)
		}
		prev = e.ts
	}
	checkFairQueue(t, &f)
	if len(f.sources) != 0 || len(f.heap) != 0 || f.q.len() != 0 {
		t.Fatalf("empty queue keeps %d sources, %d in the heap, %d slots", len(f.sources), len(f.heap), f.q.len())
	}
}

// TestFairQueueSinksSourceAfterSend: a source that held the most bytes and
// then had its oldest entries sent (popped from the front) sinks below a
// source now holding more, so the next eviction takes the flooder's oldest
// record, not the innocent client's.
func TestFairQueueSinksSourceAfterSend(t *testing.T) {
	var f fairQueue
	innocent, small, flooder := srcOf("10.0.0.1"), srcOf("10.0.0.2"), srcOf("10.0.0.3")
	push := func(src records.Source, ts, size int) {
		e := entry{ts: int64(ts), msg: strings.Repeat("x", size)}
		f.push(e, src, cost(e.msg))
	}
	for i := range 5 { // the innocent source, at the front, holds the most
		push(innocent, i, 1000)
	}
	push(small, 5, 10)
	for i := 6; i < 10; i++ { // the flooder, behind, holds a little less
		push(flooder, i, 1000)
	}
	// CloudWatch takes the two oldest: the innocent source now holds
	// three entries, the flooder four.
	f.pop()
	f.pop()
	if top := f.heap[0].key; top != flooder {
		t.Errorf("heap top is %v, want the flooder %v", top.Client, flooder.Client)
	}
	if e := f.evict(); e.ts != 6 {
		t.Fatalf("evicted entry %d, want 6 (the flooder's oldest): an innocent client lost a record to the flooder's backlog", e.ts)
	}
	checkFairQueue(t, &f)
}

// TestFairQueueRandomOps: random pushes, pops and evictions over a dozen
// sources of varied sizes, the queue kept short so that sources empty
// often and anywhere in the heap; the bookkeeping and the max-heap are
// checked after every step (a broken heap lets an eviction take a record
// from a source that does not hold the most bytes).
func TestFairQueueRandomOps(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11)) // fixed seed: a failure replays
	var f fairQueue
	for step := range 20000 {
		switch op := rng.IntN(10); {
		case f.len() < 1+rng.IntN(30):
			src := srcOf(fmt.Sprintf("10.0.0.%d", 1+rng.IntN(12)))
			e := entry{ts: int64(step), msg: strings.Repeat("x", 1+rng.IntN(2000))}
			f.push(e, src, cost(e.msg))
		case op < 6:
			f.pop()
		default:
			f.evict()
		}
		checkFairQueue(t, &f)
	}
}

// lossEvent is the JSON of a LossKind event.
type lossEvent struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"`
	Sink      string    `json:"sink"`
	Lost      uint64    `json:"lost"`
	LostSince time.Time `json:"lost_since"`
	Error     string    `json:"error"`
}

// TestShipperFairUnderFlood: one source (client) ships 60 KB lines far
// faster than CloudWatch, at a real round trip, takes them; another ships
// small lines among them. Every one of the small source's
// lines is stored, the dropped ones are all the flooder's, and the stream
// says how many were lost: the loss events' counts add up to Dropped.
func TestShipperFairUnderFlood(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.SetLatency(50 * time.Millisecond)
	cfg := testConfig()
	cfg.BufferBytes = MinBufferBytes
	s := startShipper(t, srv, cfg)
	flooder, victim := srcOf("10.0.0.9"), srcOf("fd00::5")

	// Three flood lines to each small one, until the flood has overrun the
	// buffer by far (counted, not timed: a loaded machine floods slowly).
	floods, victims := 0, 0
	for floods < 300 || s.Stats().Dropped < 200 {
		s.Ship(time.Now(), line(2, floods, 60000), flooder)
		floods++
		if floods%3 == 0 {
			s.Ship(time.Now(), line(1, victims, 300), victim)
			victims++
			time.Sleep(time.Millisecond)
		}
	}
	closeShipper(t, s, 20*time.Second)

	st := s.Stats()
	checkInvariant(t, st)
	stored := map[int]int{}
	var lost uint64
	markers := 0
	for _, e := range srv.Events(cfg.Group, cfg.Stream) {
		if p, _, ok := parseLine(e.Message); ok {
			stored[p]++
			continue
		}
		var le lossEvent
		if err := json.Unmarshal([]byte(e.Message), &le); err != nil || le.Kind != LossKind {
			t.Fatalf("unexpected event %.80q (%v)", e.Message, err)
		}
		if le.Sink != "cloudwatch" || le.Lost == 0 || le.LostSince.After(le.Time) || le.Time.UnixMilli() != e.Timestamp ||
			!strings.Contains(le.Error, "--cloudwatch-buffer 4194304 ") {
			t.Errorf("loss event %s", e.Message)
		}
		lost += le.Lost
		markers++
	}
	t.Logf("flood lines %d, small lines %d; stored: flood %d, small %d; dropped %d; loss events %d telling of %d",
		floods, victims, stored[2], stored[1], st.Dropped, markers, lost)
	if stored[1] != victims {
		t.Errorf("%d of the small source's %d lines stored: the flood crowded them out", stored[1], victims)
	}
	if st.Dropped == 0 || uint64(stored[2])+st.Dropped != uint64(floods) {
		t.Errorf("flood: %d lines, %d stored, %d dropped: the drops were not the flooder's", floods, stored[2], st.Dropped)
	}
	if lost != st.Dropped || uint64(markers) != st.LossEvents || markers == 0 {
		t.Errorf("loss events: %d telling of %d lost, LossEvents %d; dropped %d", markers, lost, st.LossEvents, st.Dropped)
	}
}

// TestMemoryStaysBoundedManySources: during an outage, records from 65,536
// clients (the /80s of one /64) and a flood from one of them, five times
// the buffer in all: the sources' bookkeeping and the tombstones eviction
// leaves are charged against the buffer, so the heap still grows by about
// the buffer only.
func TestMemoryStaysBoundedManySources(t *testing.T) {
	srv, s, cfg, growth, limit := outageHeapGrowth(t, func(s *Shipper, cfg Config) {
		base := netip.MustParseAddr("2001:db8:1:2::").As16()
		for i := range 5 * cfg.BufferBytes / 250 {
			a := base
			if i%2 == 0 {
				a[8], a[9] = byte(i>>9), byte(i>>1) // another /80 of the /64
			}
			s.Ship(time.Now(), line(0, i, 250), records.Source{Endpoint: 1, Client: netip.AddrFrom16(a)})
		}
	})
	st := s.Stats()
	t.Logf("heap grew by %.1f MiB for a %d MiB buffer (queued %d bytes, %d records)",
		float64(growth)/(1<<20), cfg.BufferBytes>>20, st.QueuedBytes, st.QueuedRecords)
	if growth > limit {
		t.Errorf("heap grew by %d bytes, above %d", growth, limit)
	}
	if st.QueuedBytes > int64(cfg.BufferBytes) || st.Dropped == 0 {
		t.Errorf("stats %+v", st)
	}
	srv.EndOutage()
}
