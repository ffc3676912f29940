package cwlogs

// entry is one queued log event. msg is immutable once queued, so the batch
// in flight can point the SDK's input at it without copying.
type entry struct {
	ts  int64 // milliseconds since the Unix epoch
	msg string
	// src is the source the entry is charged to; nil for a tombstone (an
	// entry evicted from within the queue) and for a batch's loss marker
	// (lossMarker).
	src  *source
	next uint64 // the sequence number of src's next entry; see fairQueue
}

// blockLen is the number of entries per queue block. Fixed-size blocks keep
// the queue's own overhead proportional to what it holds (a doubling ring
// would keep up to twice the slots alive) and let drained blocks be reused.
const blockLen = 512

// queue is a FIFO of entries stored in fixed-size blocks. Entries are
// numbered in push order (their sequence number), so that one within the
// queue can be found in O(1). It is not safe for concurrent use; the
// Shipper guards it with its mutex.
type queue struct {
	blocks []*[blockLen]entry
	head   int // index of the first entry in blocks[0]
	tail   int // number of entries used in the last block
	n      int
	first  uint64           // the sequence number of the first entry
	spare  *[blockLen]entry // one drained block kept for reuse
}

func (q *queue) len() int { return q.n }

// push appends e and returns its sequence number.
func (q *queue) push(e entry) uint64 {
	if len(q.blocks) == 0 || q.tail == blockLen {
		b := q.spare
		q.spare = nil
		if b == nil {
			b = new([blockLen]entry)
		}
		q.blocks = append(q.blocks, b)
		q.tail = 0
	}
	q.blocks[len(q.blocks)-1][q.tail] = e
	q.tail++
	q.n++
	return q.first + uint64(q.n-1)
}

// front returns the oldest entry; the queue must not be empty.
func (q *queue) front() *entry { return &q.blocks[0][q.head] }

// at returns the entry i places from the front; i must be below len.
func (q *queue) at(i int) *entry {
	p := q.head + i
	return &q.blocks[p/blockLen][p%blockLen]
}

// seq returns the entry with sequence number n, which must be queued.
func (q *queue) seq(n uint64) *entry { return q.at(int(n - q.first)) }

// pop removes and returns the oldest entry; the queue must not be empty.
func (q *queue) pop() entry {
	b := q.blocks[0]
	e := b[q.head]
	b[q.head] = entry{} // release the string for the GC
	q.head++
	q.n--
	q.first++
	switch {
	case q.n == 0:
		// Only one block can be left: reuse it from the start.
		q.head, q.tail = 0, 0
	case q.head == blockLen:
		q.blocks[0] = nil
		q.blocks = q.blocks[1:]
		q.spare = b
		q.head = 0
	}
	return e
}

// truncate keeps the first n entries (n at most len) and releases the rest.
func (q *queue) truncate(n int) {
	for i := n; i < q.n; i++ {
		*q.at(i) = entry{}
	}
	q.n = n
	if n == 0 {
		q.head = 0
	}
	used := q.head + n
	keep := max(1, (used+blockLen-1)/blockLen)
	for i := keep; i < len(q.blocks); i++ {
		q.spare = q.blocks[i]
		q.blocks[i] = nil
	}
	q.blocks = q.blocks[:min(keep, len(q.blocks))]
	q.tail = used - (keep-1)*blockLen
}
