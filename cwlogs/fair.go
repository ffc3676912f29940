package cwlogs

import (
	"unsafe"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// source is what the queue holds of one records.Source: its entries form a
// FIFO threaded through the queue by sequence number (head, next, tail), so
// that its oldest entry is found in O(1) and costs no allocation.
type source struct {
	key        records.Source
	bytes      int64 // cost of its queued entries
	n          int   // its queued entries
	head, tail uint64
	idx        int // its place in fairQueue.heap
}

// fairQueue is the Shipper's buffer: one FIFO of entries in the order they
// were queued, which is the order they are sent in, plus, for each source,
// the chain of its own entries and what they cost. When the buffer is full
// the Shipper evicts the oldest entry of the source holding the most bytes
// (evict), so that one client whose records outrun CloudWatch loses its own
// records, not everyone's: a source evicts others' entries only while it
// holds less than they do.
//
// An entry evicted from within the FIFO stays there as a tombstone until
// the front reaches it or the tombstones outnumber the live entries, when
// the FIFO is compacted: amortised O(1) per entry, and the slots never take
// more than twice what the live entries need. The sources are kept in a
// max-heap by bytes: O(log sources) per push, pop or eviction.
type fairQueue struct {
	q       queue
	live    int // entries that are not tombstones
	sources map[records.Source]*source
	heap    []*source // max-heap by bytes
	free    []*source // emptied sources kept for reuse
}

// What the queue's own bookkeeping costs, charged against the buffer on
// top of the entries' cost (which covers a live entry's slot): a source's
// state with its map entry and heap slot, and a tombstone's slot.
const (
	sourceOverhead    = 160
	tombstoneOverhead = int64(unsafe.Sizeof(entry{}))
)

// overhead is what the queue's bookkeeping holds beyond its entries' cost.
func (f *fairQueue) overhead() int64 {
	return int64(len(f.sources))*sourceOverhead + int64(f.q.len()-f.live)*tombstoneOverhead
}

// charge is what pushing an entry costing c for key adds to the queue's
// cost and overhead.
func (f *fairQueue) charge(key records.Source, c int64) int64 {
	if f.sources[key] == nil {
		return c + sourceOverhead
	}
	return c
}

// compactMin is the fewest tombstones worth a compaction.
const compactMin = 1024

// maxFreeSources bounds the emptied sources kept for reuse.
const maxFreeSources = 256

func (f *fairQueue) len() int { return f.live }

// front returns the oldest live entry; the queue must not be empty.
func (f *fairQueue) front() *entry { return f.q.front() }

// chain appends the entry at seq to its source s's chain, as its newest.
func (f *fairQueue) chain(s *source, seq uint64) {
	if s.n == 0 {
		s.head = seq
	} else {
		f.q.seq(s.tail).next = seq
	}
	s.tail = seq
	s.n++
}

// push queues e, charging c to the source key.
func (f *fairQueue) push(e entry, key records.Source, c int64) {
	s := f.sources[key]
	if s == nil {
		s = f.newSource(key)
	}
	e.src = s
	f.chain(s, f.q.push(e))
	s.bytes += c
	f.live++
	f.up(s.idx)
}

// pop removes and returns the oldest entry; the queue must not be empty.
func (f *fairQueue) pop() entry {
	e := f.q.pop()
	f.release(e.src, e.next, cost(e.msg))
	f.live--
	f.skipTombstones()
	e.src = nil
	return e
}

// evict removes and returns the oldest entry of the source holding the most
// bytes (of two holding as many, either); the queue must not be empty.
func (f *fairQueue) evict() entry {
	s := f.heap[0]
	p := f.q.seq(s.head)
	e := *p
	*p = entry{} // a tombstone; the string is released
	f.release(s, e.next, cost(e.msg))
	f.live--
	f.skipTombstones()
	if dead := f.q.len() - f.live; dead >= compactMin && dead > f.live {
		f.compact()
	}
	e.src = nil
	return e
}

// release takes an entry costing c off the front of source s's chain; next
// is the entry's link to the one after it.
func (f *fairQueue) release(s *source, next uint64, c int64) {
	s.n--
	s.bytes -= c
	s.head = next
	if s.n > 0 {
		f.down(s.idx)
		return
	}
	f.removeAt(s.idx)
	delete(f.sources, s.key)
	if len(f.free) < maxFreeSources {
		*s = source{}
		f.free = append(f.free, s)
	}
}

// skipTombstones pops the tombstones at the front, so that a non-empty
// queue always starts with a live entry.
func (f *fairQueue) skipTombstones() {
	for f.q.len() > 0 && f.q.front().src == nil {
		f.q.pop()
	}
}

// compact moves the live entries over the tombstones, keeping their order,
// and renumbers them, relinking each source's chain.
func (f *fairQueue) compact() {
	for _, s := range f.sources {
		s.n = 0
	}
	w := 0
	for r := range f.q.len() {
		e := f.q.at(r)
		if e.src == nil {
			continue
		}
		if w != r {
			*f.q.at(w) = *e
		}
		f.chain(e.src, f.q.first+uint64(w))
		w++
	}
	f.q.truncate(w)
}

func (f *fairQueue) newSource(key records.Source) *source {
	var s *source
	if n := len(f.free); n > 0 {
		s, f.free = f.free[n-1], f.free[:n-1]
	} else {
		s = new(source)
	}
	if f.sources == nil {
		f.sources = make(map[records.Source]*source)
	}
	s.key = key
	s.idx = len(f.heap)
	f.sources[key] = s
	f.heap = append(f.heap, s)
	return s
}

// The max-heap of sources by bytes.

func (f *fairQueue) swap(i, j int) {
	f.heap[i], f.heap[j] = f.heap[j], f.heap[i]
	f.heap[i].idx, f.heap[j].idx = i, j
}

func (f *fairQueue) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if f.heap[p].bytes >= f.heap[i].bytes {
			return
		}
		f.swap(i, p)
		i = p
	}
}

func (f *fairQueue) down(i int) {
	n := len(f.heap)
	for {
		c := 2*i + 1
		if c >= n {
			return
		}
		if c+1 < n && f.heap[c+1].bytes > f.heap[c].bytes {
			c++
		}
		if f.heap[i].bytes >= f.heap[c].bytes {
			return
		}
		f.swap(i, c)
		i = c
	}
}

func (f *fairQueue) removeAt(i int) {
	last := len(f.heap) - 1
	if i != last {
		f.swap(i, last)
	}
	f.heap[last] = nil
	f.heap = f.heap[:last]
	if i < last {
		f.down(i)
		f.up(i)
	}
}
