package netstack

import (
	"net"
	"testing"
	"time"
)

// TestReadErrorsBackOff: a GENEVE socket whose every read fails at once
// (here a read deadline in the past, which the runtime's poller reports on
// every read of a real socket without a system call) is retried after a
// growing wait, not in a loop that spins a core; each failure is counted
// on /stats (read_errors); the reader reads again once the error clears,
// and Close ends a reader between failed reads.
func TestReadErrorsBackOff(t *testing.T) {
	s, err := Listen(Config{ListenAddr: "127.0.0.1:0", Readers: 1, ReturnPath: ReturnPathBound, Handler: &testHandler{}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { s.Serve(); close(served) }()
	defer func() {
		s.Close()
		<-served
	}()

	if err := s.conns[0].SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	const window = 500 * time.Millisecond
	time.Sleep(window)
	// 1 at once, then after 1, 2, 4 ... 64 ms (127 ms for 8), then every
	// 100 ms: about a dozen in the window; a loop without a wait makes
	// hundreds of thousands.
	n := s.Stats().ReadErrors
	t.Logf("read errors in %s of a persistent error: %d", window, n)
	if n < 2 || n > 40 {
		t.Fatalf("read errors in %s of a persistent error: %d, want 2 to 40", window, n)
	}
	// The health check asks how long: about the window.
	if d := s.ReadFailingFor(); d < window/2 || d > 10*window {
		t.Errorf("ReadFailingFor %v after %v of errors", d, window)
	}

	// The error clears: the reader takes datagrams again.
	if err := s.conns[0].SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for end := time.Now().Add(5 * time.Second); s.Stats().PacketsIn == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("no datagram read 5s after the read error cleared")
		}
		c.Write([]byte("not geneve"))
	}
	if d := s.ReadFailingFor(); d != 0 {
		t.Errorf("ReadFailingFor %v once reads succeed again, want 0", d)
	}

	// Close ends a reader waiting between failed reads.
	if err := s.conns[0].SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // into the 100 ms waits
	s.Close()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running 5s after Close")
	}
}
