package proxy

import (
	"errors"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// goproxy reads HTTP/1 request heads with http.ReadRequest, which has no
// size limit: one client could grow a header line until the process runs
// out of memory. While a head is being read (from the end of one response
// to the next round trip) the client connection counts what goproxy reads
// against a limit, as net/http does with MaxHeaderBytes; goproxy's
// buffering lets a head overshoot it by a few KiB at most.
//
// HTTP/2 heads are bounded by goproxy's http2.Server, which takes over only
// once the client's preface has come: until then, and for good if the
// bytes are not the preface (a client that negotiated h2 and speaks
// HTTP/1, which goproxy then parses as such), the limit holds.
type headLimit struct {
	max      int64 // 0: no limit; read and written by goproxy's reader only
	preface  int   // HTTP/2: preface bytes still to see; -1: not HTTP/2 after all
	inHead   atomic.Bool
	read     atomic.Int64
	tooLarge atomic.Bool
}

// errHeadTooLarge ends goproxy's read of an oversized request head.
var errHeadTooLarge = errors.New("request head too large")

// arm starts the limit for a new connection.
func (l *headLimit) arm(max int, h2 bool) {
	l.max = int64(max)
	if h2 {
		l.preface = len(http2.ClientPreface)
	}
	l.inHead.Store(true)
}

// headDone marks a request head as read: its body is not limited.
func (l *headLimit) headDone() { l.inHead.Store(false) }

// count takes the bytes b just read from the client and reports whether
// they overran the limit.
func (l *headLimit) count(b []byte) bool {
	if l.max == 0 {
		return false
	}
	if l.preface > 0 {
		want := http2.ClientPreface[len(http2.ClientPreface)-l.preface:]
		k := min(len(b), len(want))
		switch {
		case string(b[:k]) != want[:k]:
			l.preface = -1
		case k == len(want):
			l.max = 0 // HTTP/2: its server bounds headers itself
			return false
		default:
			l.preface -= k
		}
	}
	return l.inHead.Load() && l.read.Add(int64(len(b))) > l.max
}

// Read implements net.Conn: it counts the bytes, and ends an oversized
// request head with a 431.
func (c *hijackedConn) Read(b []byte) (int, error) {
	if c.hold.active.Load() {
		c.endHold() // see writehold.go
	}
	n, err := c.Conn.Read(b)
	c.in.Add(int64(n))
	if c.limit.count(b[:n]) {
		if !c.limit.tooLarge.Swap(true) {
			c.write431()
		}
		return 0, errHeadTooLarge
	}
	return n, err
}

// write431 answers an oversized head, after any response bytes still held:
// they are what the client's previous request was waiting for.
func (c *hijackedConn) write431() {
	const body = "gwlbproxy: request head too large\n"
	h := &c.hold
	_ = c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second)) // before the lock: see Close
	h.mu.Lock()
	defer h.mu.Unlock()
	c.flushLocked()
	h.active.Store(false)
	_, _ = io.WriteString(writerFunc(c.write), "HTTP/1.1 431 Request Header Fields Too Large\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"+
		"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// nextHead re-arms the head limit when goproxy closes a response body,
// which it does once the response is written, before it reads the next
// request. The request's own body is closed first: goproxy closes it only
// afterwards, and closing drains what the upstream did not read (a denied
// upload, an early 413), bytes that are no head.
type nextHead struct {
	io.ReadCloser
	cc      *hijackedConn
	reqBody io.ReadCloser
}

func (b *nextHead) Close() error {
	err := b.ReadCloser.Close()
	if b.reqBody != nil {
		_ = b.reqBody.Close()
	}
	b.cc.limit.read.Store(0)
	b.cc.limit.inHead.Store(true)
	return err
}
