package netstack

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestStackMadeAtFullProcs: gVisor gives a stack one TCP processor
// goroutine per GOMAXPROCS at the moment it is made. A process that has
// lowered GOMAXPROCS (package procs) must still get a stack sized for the
// machine: Config.NewStacksAtFullProcs wraps the making, and the stack gets
// as many processors as GOMAXPROCS was inside it, not as it is outside.
func TestStackMadeAtFullProcs(t *testing.T) {
	const full = 4
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	wrapped := 0
	h := &testHandler{udp: make(chan []byte, 1)}
	s := startServer(t, Config{
		Handler: h,
		NewStacksAtFullProcs: func(newStack func()) {
			wrapped++
			prev := runtime.GOMAXPROCS(full)
			defer runtime.GOMAXPROCS(prev)
			newStack()
		},
	})
	gwlb := gwlbSocket(t, "127.0.0.1:0")
	if _, err := gwlb.WriteToUDP(geneve(0x0123456789abcdef, udpPacket(5000, 100)), net.UDPAddrFromAddrPort(s.Addr())); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.udp:
	case <-time.After(5 * time.Second):
		t.Fatalf("no UDP flow reached the handler; stats %+v", s.Stats())
	}
	if wrapped != 1 {
		t.Fatalf("NewStacksAtFullProcs called %d times for one stack, want 1", wrapped)
	}
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("GOMAXPROCS is %d after the stack was made, want the test's 1 back", n)
	}
	waitUntil(t, 5*time.Second, "the stack's TCP processors", func() (bool, string) {
		n := tcpProcessors()
		return n == full, fmt.Sprintf("%d TCP processor goroutines, want %d", n, full)
	})
}

// tcpProcessors counts the goroutines running gVisor's TCP processor loop.
func tcpProcessors() int {
	n := 0
	for _, g := range stackGoroutines() {
		if strings.Contains(g, "tcp.(*processor).start") {
			n++
		}
	}
	return n
}
