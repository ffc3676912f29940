package intercept

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// writeLog is a real TCP connection that remembers the size of each write.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes []int
}

func (w *writeLog) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, len(b))
	w.mu.Unlock()
	return w.Conn.Write(b)
}

func (w *writeLog) sizes() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.writes...)
}

// newHeldConn returns a client connection as goproxy gets it, the log of
// its writes, and the client's end. With a delay of 0 the timer is the
// real one; tests that count writes make it long, so that a slow machine
// cannot split what they expect as one.
func newHeldConn(t *testing.T, delay time.Duration) (*hijackedConn, *writeLog, net.Conn) {
	a, b := testnet.TCPPair(t)
	log := &writeLog{Conn: a}
	c := &hijackedConn{Conn: log}
	c.hold.delay = delay
	c.limit.arm(0, false)
	c.limit.headDone() // goproxy has read a request and writes its response
	t.Cleanup(func() { c.Close() })
	return c, log, b
}

// nextRequest does what goproxy does once a response is written: closes
// its body (which re-arms the head limit) and reads the next request head,
// here one byte the client sends.
func nextRequest(t *testing.T, c *hijackedConn, peer net.Conn) {
	t.Helper()
	c.limit.inHead.Store(true)
	if _, err := peer.Write([]byte("G")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("reading the next request: %v", err)
	}
}

// chunkyBody returns its chunks one Read at a time, as an upstream
// response body does.
type chunkyBody struct{ chunks []string }

func (b *chunkyBody) Read(p []byte) (int, error) {
	if len(b.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.chunks[0])
	b.chunks = b.chunks[1:]
	return n, nil
}

func (b *chunkyBody) Close() error { return nil }

// A response written by net/http (a head, and a chunked body of several
// chunks, or a Content-Length one) reaches the client in one write once
// goproxy reads the next request, and the client reads it intact.
func TestWriteHoldOneWritePerResponse(t *testing.T) {
	chunks := []string{strings.Repeat("a", 700), strings.Repeat("b", 10), strings.Repeat("c", 2000)}
	want := strings.Join(chunks, "")
	for _, chunked := range []bool{true, false} {
		c, log, peer := newHeldConn(t, time.Hour)
		resp := &http.Response{
			StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{"Content-Type": {"text/plain"}},
			Body: &chunkyBody{chunks: chunks}, ContentLength: int64(len(want)),
		}
		if chunked {
			resp.ContentLength, resp.TransferEncoding = -1, []string{"chunked"}
		}
		c.holdResponse(true)
		if err := resp.Write(c); err != nil {
			t.Fatal(err)
		}
		if sizes := log.sizes(); len(sizes) != 0 {
			t.Fatalf("chunked %v: writes %v before the response was complete", chunked, sizes)
		}
		nextRequest(t, c, peer)
		sizes := log.sizes()
		if len(sizes) != 1 {
			t.Fatalf("chunked %v: writes %v, want one", chunked, sizes)
		}
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := http.ReadResponse(bufio.NewReader(peer), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(got.Body)
		if err != nil || string(body) != want || (len(got.TransferEncoding) > 0) != chunked {
			t.Fatalf("chunked %v: body intact %v, %v, transfer encoding %v", chunked, string(body) == want, err, got.TransferEncoding)
		}
		if c.out.Load() != int64(sizes[0]) {
			t.Fatalf("counted %d bytes out, wrote %d", c.out.Load(), sizes[0])
		}
		// Writes after the response are not held.
		c.Write([]byte("x"))
		if sizes := log.sizes(); len(sizes) != 2 || sizes[1] != 1 {
			t.Fatalf("writes %v after the response", sizes)
		}
	}
}

// A body write that does not fit with what is held leaves with its start
// in one write (at most one TLS record); a big write with nothing held is
// not copied into a held buffer first.
func TestWriteHoldBigWrites(t *testing.T) {
	for _, bodyLen := range []int{holdSmall, maxCoalesced, 3 * maxCoalesced} {
		c, log, peer := newHeldConn(t, time.Hour)
		head := "HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n"
		body := bytes.Repeat([]byte("b"), bodyLen)
		c.holdResponse(true)
		if n, err := c.Write([]byte(head)); n != len(head) || err != nil {
			t.Fatalf("head write: %d, %v", n, err)
		}
		if n, err := c.Write(body); n != len(body) || err != nil {
			t.Fatalf("body write: %d, %v", n, err)
		}
		if n, err := c.Write(body); n != len(body) || err != nil {
			t.Fatalf("second body write: %d, %v", n, err)
		}
		want := head + string(body) + string(body)
		got := make([]byte, len(want))
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(peer, got); err != nil || string(got) != want {
			t.Fatalf("body %d: read %v, bytes intact %v", bodyLen, err, string(got) == want)
		}
		sizes := log.sizes()
		if sizes[0] != min(len(head)+bodyLen, maxCoalesced) || sizes[len(sizes)-1] != bodyLen {
			t.Fatalf("body %d: writes %v, want the head with the body's start, and the second write whole", bodyLen, sizes)
		}
	}
}

// Held bytes whose response goes on slowly (a stream of events) reach the
// client within the delay, without anything else happening; Close writes
// what is still held.
func TestWriteHoldDelayAndClose(t *testing.T) {
	// Long enough that a loaded machine does not split the two writes,
	// short enough to show the timer at work.
	c, log, peer := newHeldConn(t, 100*time.Millisecond)
	c.holdResponse(true)
	c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n"))
	c.Write([]byte("5\r\nevent\r\n"))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	want := "HTTP/1.1 200 OK\r\n\r\n5\r\nevent\r\n"
	got := make([]byte, len(want))
	start := time.Now()
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != want {
		t.Fatalf("held bytes: %q, %v", got, err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("held bytes arrived after %v", el)
	}
	if sizes := log.sizes(); len(sizes) != 1 {
		t.Fatalf("writes %v, want the held bytes in one", sizes)
	}

	c.Write([]byte("3\r\nend\r\n"))
	c.Close()
	rest, _ := io.ReadAll(peer)
	if string(rest) != "3\r\nend\r\n" {
		t.Fatalf("after close: %q", rest)
	}
}

// Reading a request body does not write what is held: the client may be
// sending it all before it reads anything.
func TestWriteHoldBodyReadKeepsHolding(t *testing.T) {
	c, log, peer := newHeldConn(t, time.Hour)
	c.holdResponse(true)
	c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"))
	peer.Write([]byte("upload"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	if sizes := log.sizes(); len(sizes) != 0 {
		t.Fatalf("writes %v while reading a request body, want none", sizes)
	}
	c.Write([]byte("!"))
	nextRequest(t, c, peer)
	if sizes := log.sizes(); len(sizes) != 1 {
		t.Fatalf("writes %v, want the response in one", sizes)
	}
}

// A response that is not held (no body, or a 101 that makes the connection
// a tunnel) first writes what an earlier response left held, if goproxy's
// read of the next head went unnoticed (a pipelined request, say).
func TestWriteHoldEndsForUnheldResponse(t *testing.T) {
	c, log, peer := newHeldConn(t, time.Hour)
	c.holdResponse(true)
	c.Write([]byte("first"))
	c.holdResponse(false)
	c.Write([]byte("second"))
	want := "firstsecond"
	got := make([]byte, len(want))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != want {
		t.Fatalf("read %q, %v", got, err)
	}
	if sizes := log.sizes(); len(sizes) != 2 {
		t.Fatalf("writes %v, want the held bytes, then the unheld write", sizes)
	}
}

// Close does not wait for ever behind a write blocked on a client that
// stopped reading (a WebSocket tunnel whose other direction ended): the
// connection closes, and the blocked write fails.
func TestWriteHoldCloseUnblocksWriter(t *testing.T) {
	t.Parallel()
	a, _ := net.Pipe() // the other end never reads
	c := &hijackedConn{Conn: a}
	wrote := make(chan error, 1)
	go func() { _, err := c.Write([]byte("never read")); wrote <- err }()
	time.Sleep(20 * time.Millisecond) // the write takes the lock and blocks
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("Close still blocked behind the write after 15s")
	}
	if err := <-wrote; err == nil {
		t.Fatal("the blocked write succeeded")
	}
}
