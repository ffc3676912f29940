package intercept

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// A request body goes upstream as the client sends it, and its record's
// bytes_out is what of it was written to the destination. h1Transport
// writes a request through a 4 KiB buffer; net/http flushes the head
// before a body it cannot tell is in memory, and a chunked body chunk by
// chunk, but copies a Content-Length body into the buffer, which left only
// when full or at the body's end: a client that sent part of its body and
// waited (an interactive upload) had it held for as long as it waited, and
// after an early answer up to 4 KiB read from the client, and counted,
// never left.

// copyBufs holds the buffers countingWriter.ReadFrom copies a body through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// ReadFrom writes r to w read by read. bufio.Writer hands a body's copy to
// it once its buffer is empty (the head flushed), so that each read of the
// client's body leaves at once rather than waiting in the buffer.
func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// Only Write: io.CopyBuffer would hand the copy back to ReadFrom.
	return io.CopyBuffer(struct{ io.Writer }{w}, r, *bp)
}

// bodySent is what of a request's body left for the destination, as its
// transport counts it when it can (h1Transport); else nothing counts it,
// and the reads of the body stand for it (countingReader.out).
type bodySent struct {
	n       atomic.Int64
	counted atomic.Bool // a transport counts n
	// client is the HTTP/1 client connection the body is read from, whose
	// reader's waits let the body's held writes go (uploadHold); nil for
	// an HTTP/2 stream's, read by x/net's reader for every stream.
	client net.Conn
}

// bodySentKey is the context key of a request's bodySent.
type bodySentKey struct{}

// withBodySent returns req with bs in its context.
func withBodySent(req *http.Request, bs *bodySent) *http.Request {
	return req.WithContext(context.WithValue(req.Context(), bodySentKey{}, bs))
}

// bodySentOf returns the bodySent in ctx, or nil.
func bodySentOf(ctx context.Context) *bodySent {
	bs, _ := ctx.Value(bodySentKey{}).(*bodySent)
	return bs
}

// sentBody counts a request body's bytes into to as they are known to
// have left: a read's once the next read is asked for (the copy writes
// each read whole before it reads again, and stops at a failed write) or
// once the request was written whole (done). A read whose write failed is
// not counted.
type sentBody struct {
	io.ReadCloser
	to      *bodySent
	pending int64
	// hold, if set, holds the body's small writes (uploadHold): a read's
	// bytes may not have left when the next read is asked for.
	hold *uploadHold
	// err is a read's error kept for the next read. A reader may return
	// data and an error from one read (net/http's chunked reader does when
	// the client's FIN or reset cuts a chunk); the copy writes that data
	// and stops without asking again, and when the request then fails
	// (a cut body; a short one at io.EOF) done is never called: the data
	// would leave uncounted. Handed back alone on the next read, the
	// error lets that read count it first.
	err error
}

func (b *sentBody) Read(p []byte) (int, error) {
	b.done()
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.ReadCloser.Read(p)
	b.pending = int64(n)
	if n > 0 && err != nil {
		b.err = err
		return n, nil
	}
	return n, err
}

// done counts the last read: the request was written whole. Held with
// others (uploadHold), it counts once they have left.
func (b *sentBody) done() {
	if b.hold != nil {
		b.hold.settle(b.pending, b.to)
	} else {
		b.to.n.Add(b.pending)
	}
	b.pending = 0
}

// h1Writer is a request's buffered writer, the counting writer under it
// and the hold of its body's small writes, pooled together for the same
// reason.
type h1Writer struct {
	bw   *bufio.Writer
	cw   countingWriter
	hold uploadHold
}

var h1Writers = sync.Pool{New: func() any { return &h1Writer{bw: bufio.NewWriterSize(nil, 4<<10)} }}

// writeRequest writes req through a pooled buffer and returns how many
// bytes reached c. A body goes as it is read, small reads in a burst
// gathered (uploadHold), and what of it left is counted into the
// request's bodySent, when it has one.
func writeRequest(c net.Conn, req *http.Request) (int64, error) {
	wr := h1Writers.Get().(*h1Writer)
	wr.cw = countingWriter{w: c}
	cw, bw := &wr.cw, wr.bw
	bw.Reset(cw)
	var body *sentBody
	if bs := bodySentOf(req.Context()); bs != nil && !bodyless(req) {
		body = &sentBody{ReadCloser: req.Body, to: bs, hold: &wr.hold}
		req = req.WithContext(req.Context()) // a copy: the caller's keeps its body
		req.Body = body
		wr.hold.start((*countedOut)(cw), bs.client)
		cw.hold = &wr.hold
	}
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if body != nil {
		// What is held leaves after a failed read of the body too, as it
		// would have unheld; not after a failed write.
		if herr := wr.hold.finish(); err == nil {
			err = herr
		}
	}
	if err == nil && body != nil {
		body.done()
	}
	n := cw.n
	bw.Reset(nil)
	wr.cw = countingWriter{}
	h1Writers.Put(wr)
	return n, err
}

// countingWriter counts what was written through it, through hold if set.
type countingWriter struct {
	w    io.Writer
	n    int64
	hold *uploadHold
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.hold != nil {
		return w.hold.write(b)
	}
	return (*countedOut)(w).Write(b)
}

// countedOut is a countingWriter's write to its writer, under its hold.
type countedOut countingWriter

func (w *countedOut) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n += int64(n)
	return n, err
}
