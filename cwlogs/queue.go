package cwlogs

// entry is one queued log event. msg is immutable once queued, so the batch
// in flight can point the SDK's input at it without copying.
type entry struct {
	ts  int64 // milliseconds since the Unix epoch
	msg string
}

// blockLen is the number of entries per queue block. Fixed-size blocks keep
// the queue's own overhead proportional to what it holds (a doubling ring
// would keep up to twice the slots alive) and let drained blocks be reused.
const blockLen = 512

// queue is a FIFO of entries stored in fixed-size blocks. It is not safe for
// concurrent use; the Shipper guards it with its mutex.
type queue struct {
	blocks []*[blockLen]entry
	head   int // index of the first entry in blocks[0]
	tail   int // number of entries used in the last block
	n      int
	spare  *[blockLen]entry // one drained block kept for reuse
}

func (q *queue) len() int { return q.n }

func (q *queue) push(e entry) {
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
}

// front returns the oldest entry; the queue must not be empty.
func (q *queue) front() *entry { return &q.blocks[0][q.head] }

// pop removes and returns the oldest entry; the queue must not be empty.
func (q *queue) pop() entry {
	b := q.blocks[0]
	e := b[q.head]
	b[q.head] = entry{} // release the string for the GC
	q.head++
	q.n--
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
