package proxy

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
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

func newHeldConn(t *testing.T) (*hijackedConn, *writeLog, net.Conn) {
	a, b := tcpPair(t)
	log := &writeLog{Conn: a}
	return &hijackedConn{Conn: log, closed: make(chan struct{})}, log, b
}

// A held head leaves in one write with the start of its body; bytes and
// their order are intact, and the byte count is what reached the socket.
func TestHeadHoldCoalesces(t *testing.T) {
	for _, bodyLen := range []int{100, maxCoalesced, 3 * maxCoalesced} {
		c, log, peer := newHeldConn(t)
		head := "HTTP/1.1 200 OK\r\nContent-Length: " + strings.Repeat("9", 5) + "\r\n\r\n"
		body := bytes.Repeat([]byte("b"), bodyLen)
		c.holdNextHead()
		if n, err := c.Write([]byte(head)); n != len(head) || err != nil {
			t.Fatalf("head write: %d, %v", n, err)
		}
		if n, err := c.Write(body); n != len(body) || err != nil {
			t.Fatalf("body write: %d, %v", n, err)
		}
		got := make([]byte, len(head)+len(body))
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(peer, got); err != nil || string(got) != head+string(body) {
			t.Fatalf("body %d: read %v, bytes intact %v", bodyLen, err, string(got) == head+string(body))
		}
		sizes := log.sizes()
		if sizes[0] != min(len(head)+bodyLen, maxCoalesced) || (bodyLen+len(head) <= maxCoalesced && len(sizes) != 1) {
			t.Fatalf("body %d: writes %v, want the head with the body's start in the first", bodyLen, sizes)
		}
		if c.out.Load() != int64(len(got)) {
			t.Fatalf("counted %d bytes out, wrote %d", c.out.Load(), len(got))
		}
		c.Close()
	}
}

// A body that does not start within the delay does not keep its head
// from the client, and Close writes a head still held.
func TestHeadHoldDelayAndClose(t *testing.T) {
	c, log, peer := newHeldConn(t)
	c.holdNextHead()
	c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n"))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 19)
	start := time.Now()
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "HTTP/1.1 200 OK\r\n\r\n" {
		t.Fatalf("held head: %q, %v", got, err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("held head arrived after %v", el)
	}
	c.Write([]byte("late body"))
	if sizes := log.sizes(); len(sizes) != 2 {
		t.Fatalf("writes %v, want the head alone, then the body", sizes)
	}

	c.holdNextHead()
	c.Write([]byte("HEAD2"))
	c.Close()
	rest, _ := io.ReadAll(peer)
	if string(rest) != "late bodyHEAD2" {
		t.Fatalf("after close: %q", rest)
	}
}
