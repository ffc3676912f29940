package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// loopbackPair returns both ends of a TCP connection on 127.0.0.1.
func loopbackPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	d, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

// chunks writes sizes' chunks of distinct bytes to w, pausing between them
// so that the reader runs dry, then half-closes w; it returns what it wrote.
func chunks(w net.Conn, sizes []int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	var all bytes.Buffer
	for _, n := range sizes {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		all.Write(b)
		if _, err := w.Write(b); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = closeWrite(w)
	return all.Bytes()
}

// relayResult is what Relay returned.
type relayResult struct {
	out, in int64
	err     error
}

func runRelay(client, upstream net.Conn) <-chan relayResult {
	done := make(chan relayResult, 1)
	startRelay(client, upstream, func(out, in int64, err error) { done <- relayResult{out, in, err} })
	return done
}

// relayAndWait relays and waits for the relay to end.
func relayAndWait(client, upstream net.Conn) (out, in int64, err error) {
	r := <-runRelay(client, upstream)
	return r.out, r.in, r.err
}

// plainConn hides a connection's raw socket: the relay reads it with
// plain Reads.
type plainConn struct{ net.Conn }

func (c plainConn) CloseWrite() error { return closeWrite(c.Conn) }

// Both ways, with quiet spells and chunks larger than a buffer, and each
// half-close passed on: a raw socket as the destination and a plain
// net.Conn as the client, so the raw reads and the plain ones are both
// exercised; nothing is lost or reordered, and the counts are right.
func TestRelayBothWaysRawAndPlain(t *testing.T) {
	clientApp, clientSide := loopbackPair(t)
	upSide, server := loopbackPair(t)
	done := runRelay(plainConn{clientSide}, upSide)

	sizes := []int{1, 100_000, 3, 2048, 2049, 70_000, relayBufSize, relayBufSize + 1, 3*relayBufSize + 5}
	wantOut := make(chan []byte, 1)
	go func() { wantOut <- chunks(clientApp, sizes, 1) }()
	wantIn := make(chan []byte, 1)
	go func() { wantIn <- chunks(server, sizes, 2) }()

	gotOut := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(server); gotOut <- b }()
	gotIn, err := io.ReadAll(clientApp)
	if err != nil {
		t.Fatal(err)
	}
	if w := <-wantIn; !bytes.Equal(gotIn, w) {
		t.Errorf("the client got %d bytes, want %d in order", len(gotIn), len(w))
	}
	if w, g := <-wantOut, <-gotOut; !bytes.Equal(g, w) {
		t.Errorf("the destination got %d bytes, want %d in order", len(g), len(w))
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Relay: %v", r.err)
	}
	var total int64
	for _, n := range sizes {
		total += int64(n)
	}
	if r.out != total || r.in != total {
		t.Errorf("Relay counted %d out and %d in, want %d each", r.out, r.in, total)
	}
}

// What classification read ahead comes first: the client's sniffed bytes
// before the rest of the client's stream, the destination's early banner
// before the rest of its own, and then the raw socket underneath takes
// over.
func TestRelayWrappersFirst(t *testing.T) {
	clientApp, clientConn := loopbackPair(t)
	upSide, server := loopbackPair(t)

	// The client's first bytes are already in the sniffer's buffer.
	if _, err := clientApp.Write([]byte("sniffed|")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(clientConn)
	if _, err := br.Peek(len("sniffed|")); err != nil {
		t.Fatal(err)
	}
	client := &peekedConn{Conn: clientConn, r: br}
	upstream := &prefixConn{Conn: upSide, prefix: []byte("banner|")}
	done := runRelay(client, upstream)

	if _, err := clientApp.Write([]byte("rest")); err != nil {
		t.Fatal(err)
	}
	_ = clientApp.CloseWrite()
	if _, err := server.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	_ = server.CloseWrite()
	gotOut, err := io.ReadAll(server)
	if err != nil || string(gotOut) != "sniffed|rest" {
		t.Errorf("the destination read %q, %v; want %q", gotOut, err, "sniffed|rest")
	}
	gotIn, err := io.ReadAll(clientApp)
	if err != nil || string(gotIn) != "banner|more" {
		t.Errorf("the client read %q, %v; want %q", gotIn, err, "banner|more")
	}
	if r := <-done; r.err != nil || r.out != 12 || r.in != 11 {
		t.Errorf("Relay: %d out, %d in, %v; want 12, 11, nil", r.out, r.in, r.err)
	}
	if client.r != nil {
		t.Error("the sniffer's reader was not given back once its bytes were read")
	}
}

// A reset by the destination ends both directions: Relay reports it, and
// the client's side is reset too rather than closed cleanly.
func TestRelayResetPassesOn(t *testing.T) {
	clientApp, clientSide := loopbackPair(t)
	upSide, server := loopbackPair(t)
	done := runRelay(clientSide, upSide)

	if _, err := clientApp.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	_ = server.SetLinger(0)
	server.Close() // a RST

	select {
	case r := <-done:
		if r.err == nil {
			t.Error("Relay returned no error after the destination reset")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Relay did not return after the destination reset")
	}
	_ = clientApp.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(clientApp)
	if err == nil || errors.Is(err, io.EOF) {
		t.Errorf("the client read to %v, want a reset", err)
	}
}

// TestRelayDestinationTimeoutRecorded: a destination that stops
// acknowledging ends the relay with ETIMEDOUT from the host socket, and the
// record's result is timeout, not reset: a reset is what the peer sent,
// which it did not. The kernel gives up on a destination after its
// retransmission or keep-alive probes, minutes; here TCP_USER_TIMEOUT on the
// appliance's socket brings that to half a second, while the destination
// reads nothing, so its window shuts and the kernel's window probes make
// no progress: the user timeout counts from the last, and ends the socket.
func TestRelayDestinationTimeoutRecorded(t *testing.T) {
	client, clientPeer := loopbackPair(t)
	up, dest := loopbackPair(t)
	_ = dest // reads nothing
	rc, err := up.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, 0x12 /* TCP_USER_TIMEOUT */, 500)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	stalls := newStallWatch(time.Minute) // far beyond the test: the timeout ends it
	ended := make(chan error, 1)
	startWatchedRelay(client, up, stalls, nil, nil, func(_ relayCounts, err error) { ended <- err })
	var sent atomic.Int64
	go flood(clientPeer, &sent)
	select {
	case err := <-ended:
		t.Logf("relay ended after %d bytes: %v", sent.Load(), err)
		if !errors.Is(err, syscall.ETIMEDOUT) {
			t.Fatalf("relay error %v, want ETIMEDOUT", err)
		}
		if got := relayResultOf(err); got != "timeout" {
			t.Errorf("result %q, want timeout", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the relay did not end; %d bytes sent", sent.Load())
	}
}

// TestRelayLongQuietThenDestinationSends: a relayed flow whose destination
// stays quiet for longer than IdleAfter plus the park watch's empty wait
// (1 s) still relays what the destination sends afterwards (design.md: the
// watch "resumes the direction in a new goroutine at the destination's
// next bytes"); else an SSH session or a long poll would hang until its
// idle timeout.
func TestRelayLongQuietThenDestinationSends(t *testing.T) {
	t.Cleanup(hostconn.SetIdleAfter(100 * time.Millisecond))
	r := newRelayRig(t)
	cc, conn := r.dial(t, 3900)
	upSide, server := loopbackPair(t)
	done := make(chan relayResult, 1)
	startRelay(conn, hostconn.Wrap(upSide), func(out, in int64, err error) { done <- relayResult{out, in, err} })
	exchange(t, cc, server, "hello")
	// The quiet is what is tested, not a wait for an event: it must outlast
	// two of the watch's empty waits while the direction is parked.
	time.Sleep(2500 * time.Millisecond)
	if _, err := server.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	cc.SetReadDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, 4)
	if _, err := io.ReadFull(cc, b); err != nil || string(b) != "late" {
		t.Fatalf("the client read %q, %v: what the destination sent after 2.5 s of quiet was never relayed", b, err)
	}
	cc.Close()
	server.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not end")
	}
}
