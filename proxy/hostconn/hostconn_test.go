package hostconn_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// pair is a wrapped client connection and the server's plain end, over
// loopback.
func pair(t *testing.T) (*hostconn.Conn, *net.TCPConn) {
	t.Helper()
	a, b := testnet.TCPPair(t)
	c, ok := hostconn.Wrap(a).(*hostconn.Conn)
	if !ok {
		t.Fatal("a *net.TCPConn was not wrapped")
	}
	return c, b
}

// TestBothWays: many megabytes each way at once, more than the socket
// buffers hold, so that writes are partial and reads and writes wait in
// the poller, arrive whole and in order.
func TestBothWays(t *testing.T) {
	c, peer := pair(t)
	up := make([]byte, 24<<20)
	down := make([]byte, 24<<20)
	rand.Read(up)
	rand.Read(down)
	errc := make(chan error, 3)
	got := make(chan []byte, 1)
	go func() { // the peer echoes nothing: it reads what c writes, and writes its own
		b, err := io.ReadAll(peer)
		got <- b
		errc <- err
	}()
	go func() {
		_, err := peer.Write(down)
		if err == nil {
			err = peer.CloseWrite()
		}
		errc <- err
	}()
	go func() {
		n, err := c.Write(up)
		if err == nil && n != len(up) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	var read bytes.Buffer
	buf := make([]byte, 100_000) // not a power of two: reads end mid-segment
	for {
		n, err := c.Read(buf)
		read.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read after %d bytes: %v", read.Len(), err)
		}
	}
	for range 3 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(read.Bytes(), down) {
		t.Fatalf("read %d bytes, not the %d the peer wrote", read.Len(), len(down))
	}
	if b := <-got; !bytes.Equal(b, up) {
		t.Fatalf("the peer read %d bytes, not the %d written", len(b), len(up))
	}
}

// TestErrors: deadlines, a closed connection, a peer that reset, and an
// abort come out as the net package's own calls report them.
func TestErrors(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		c, _ := pair(t)
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := c.Read(make([]byte, 10))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read past its deadline: %v", err)
		}
		if oe, ok := err.(*net.OpError); !ok || oe.Op != "read" {
			t.Fatalf("read past its deadline: %#v, want an OpError of read", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		c, _ := pair(t)
		c.Close()
		if _, err := c.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after Close: %v", err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write after Close: %v", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		c, peer := pair(t)
		peer.SetLinger(0)
		peer.Close()
		// Writes go on until the RST has come back; then EPIPE or
		// ECONNRESET, with no SIGPIPE to end the process.
		var err error
		deadline := time.Now().Add(5 * time.Second)
		for err == nil && time.Now().Before(deadline) {
			_, err = c.Write(make([]byte, 1<<16))
		}
		if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("write to a reset peer: %v", err)
		}
	})
	t.Run("abort", func(t *testing.T) {
		c, peer := pair(t)
		c.Abort()
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := peer.Read(make([]byte, 10)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the peer of an aborted connection read %v, want a reset", err)
		}
	})
	t.Run("eof", func(t *testing.T) {
		c, peer := pair(t)
		peer.Write([]byte("bye"))
		peer.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "bye" {
			t.Fatalf("read %q, %v", b, err)
		}
	})
	t.Run("close while reading", func(t *testing.T) {
		c, _ := pair(t)
		errc := make(chan error, 2)
		for range 2 {
			go func() { _, err := c.Read(make([]byte, 10)); errc <- err }()
		}
		time.Sleep(50 * time.Millisecond)
		c.Close()
		for range 2 {
			select {
			case err := <-errc:
				if !errors.Is(err, net.ErrClosed) {
					t.Fatalf("a read waiting at Close: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a read waiting at Close did not end")
			}
		}
	})
	t.Run("empty", func(t *testing.T) {
		c, _ := pair(t)
		if n, err := c.Read(nil); n != 0 || err != nil {
			t.Fatalf("empty read: %d, %v", n, err)
		}
		if n, err := c.Write(nil); n != 0 || err != nil {
			t.Fatalf("empty write: %d, %v", n, err)
		}
	})
}

// TestErrorsAsNet: errors read as the net package's own: the same
// operation, network and cause, and as many bytes written before a
// deadline.
func TestErrorsAsNet(t *testing.T) {
	type outcome struct {
		n   int
		op  string
		err string
	}
	describe := func(n int, err error) outcome {
		o := outcome{n: n}
		if oe, ok := err.(*net.OpError); ok {
			o.op, o.err = oe.Op+" "+oe.Net, oe.Err.Error()
		} else if err != nil {
			o.err = err.Error()
		}
		return o
	}
	cases := map[string]func(c net.Conn, peer *net.TCPConn) (int, error){
		"read, closed": func(c net.Conn, _ *net.TCPConn) (int, error) {
			c.Close()
			return c.Read(make([]byte, 1))
		},
		"write, closed": func(c net.Conn, _ *net.TCPConn) (int, error) {
			c.Close()
			return c.Write([]byte("x"))
		},
		"read, deadline": func(c net.Conn, _ *net.TCPConn) (int, error) {
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			return c.Read(make([]byte, 1))
		},
		"write, deadline": func(c net.Conn, _ *net.TCPConn) (int, error) {
			// The peer reads nothing: the buffers fill, and the write
			// stops at its deadline having written part. The 64 MiB are
			// made before the deadline is set: made within it, their
			// zeroing and page faults took the whole 100 ms now and then,
			// and the write wrote nothing on one of the two sockets.
			buf := make([]byte, 64<<20)
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := c.Write(buf)
			if n == 0 || n == 64<<20 {
				return -1, err // not the partial write this case is about
			}
			return 1, err // the count differs with the buffers' fill
		},
		"read, reset": func(c net.Conn, peer *net.TCPConn) (int, error) {
			peer.SetLinger(0)
			peer.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			return c.Read(make([]byte, 1))
		},
		"read, end": func(c net.Conn, peer *net.TCPConn) (int, error) {
			peer.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			return c.Read(make([]byte, 1))
		},
	}
	for name, run := range cases {
		t.Run(name, func(t *testing.T) {
			if raceEnabled && name == "write, deadline" {
				t.Skip("the race detector reads all 64 MiB at each call: a deadline of 100 ms may pass before the first")
			}
			a, peer := testnet.TCPPair(t)
			want := describe(run(a, peer))
			b, peer := testnet.TCPPair(t)
			got := describe(run(hostconn.Wrap(b), peer))
			if got != want {
				t.Fatalf("wrapped: %+v; the net package: %+v", got, want)
			}
		})
	}
}

// TestRaceSeesSocket: under the race detector, what a goroutine did
// before writing to a socket happens before what the reader of those bytes
// does after, through the wrapped connection either way; raw system calls
// would hide that, and the detector would report a race here.
func TestRaceSeesSocket(t *testing.T) {
	c, peer := pair(t)
	var shared int
	done := make(chan struct{})
	go func() {
		defer close(done)
		shared = 1
		peer.Write([]byte{1})
		b := make([]byte, 1)
		peer.Read(b) // c's byte: after shared = 2
		shared = 3
	}()
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil {
		t.Fatal(err)
	}
	if shared != 1 {
		t.Fatalf("shared is %d", shared)
	}
	shared = 2
	if _, err := c.Write([]byte{2}); err != nil {
		t.Fatal(err)
	}
	<-done
	if shared != 3 {
		t.Fatalf("shared is %d", shared)
	}
}

// TestWrapOther: what is not a host TCP connection is left as it is.
func TestWrapOther(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if c := hostconn.Wrap(a); c != a {
		t.Fatalf("a pipe was wrapped: %T", c)
	}
}

// TestNoAllocs: a read and a write that need not wait allocate nothing.
func TestNoAllocs(t *testing.T) {
	c, peer := pair(t)
	msg := []byte("ping")
	buf := make([]byte, 16)
	pbuf := make([]byte, 16)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peer, pbuf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per round trip", allocs)
	}
}
