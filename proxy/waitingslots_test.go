package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"
)

// waitingHeld returns how many waiting-share slots all clients hold.
func waitingSlotsHeld(p *Proxy) int {
	p.tcp.waiting.mu.Lock()
	defer p.tcp.waiting.mu.Unlock()
	n := 0
	for _, e := range p.tcp.waiting.m {
		n += e.flows
	}
	return n
}

func waitNoWaitingSlots(t *testing.T, p *Proxy, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for waitingSlotsHeld(p) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d waiting slots still held, want 0 (tcp_waiting_drops %d)", what, waitingSlotsHeld(p), p.Stats().TCPWaitingDrops)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A connection dialled before classification (the policy allows its
// addresses) gives its waiting slot back once its first bytes have been
// classified: else every client is refused for good after
// MaxWaitingTCPPerClient connections. (Kills the mutant that drops
// s.p.tcp.waiting.release in tcpSession.serve.)
func TestDialledFirstReleasesSlot(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: allow\n", clsOptions{})
	r.p.cfg.MaxWaitingTCPPerClient = 2
	for i := range 4 {
		c := r.dial(t, r.plainDest)
		if _, err := c.Write([]byte("\x00\x01binary, not HTTP\n")); err != nil {
			t.Fatal(err)
		}
		_ = i
		time.Sleep(100 * time.Millisecond) // classified
		_ = c.SetLinger(0)
		c.Close()
		r.record(t, c, "tcp") // written once the relay ends
	}
	_ = net.IPv4len
	deadline := time.Now().Add(5 * time.Second)
	for r.p.Stats().TCPActive != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	waitNoWaitingSlots(t, r.p, "after 4 classified connections")
	if n := r.p.Stats().TCPWaitingDrops; n != 0 {
		t.Errorf("tcp_waiting_drops %d, want 0", n)
	}
}

// A connection whose dial (before classification) fails gives its slot
// back. (Kills the mutant that drops p.tcp.waiting.release on handleTCP's
// dial error.)
func TestDialErrorReleasesSlot(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: allow\n", clsOptions{})
	r.p.cfg.MaxWaitingTCPPerClient = 2
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	for range 4 {
		c := r.dial(t, closed)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.p.Stats().TCPDialErrors+r.p.Stats().TCPWaitingDrops < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	waitNoWaitingSlots(t, r.p, "after 4 failed dials")
	if n := r.p.Stats().TCPWaitingDrops; n != 0 {
		t.Errorf("tcp_waiting_drops %d, want 0: failed dials kept their slots", n)
	}
}

// A flow only a name could let through, spliced and relayed, gives its
// slot back once dialled (dialAllowed). (Kills the mutant that drops
// s.releaseWaiting in dialAllowed: each relayed splice kept its slot until
// the flow ended, and a client with MaxWaitingTCPPerClient long-lived
// spliced connections had every further one refused.)
func TestNamedSpliceReleasesSlotAtDial(t *testing.T) {
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	r.p.cfg.MaxWaitingTCPPerClient = 2
	var held []*tls.Conn
	for range 3 {
		c := r.dial(t, r.tlsDest)
		tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: r.upRoots})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("spliced handshake: %v (tcp_waiting_drops %d)", err, r.p.Stats().TCPWaitingDrops)
		}
		held = append(held, tc) // open and relayed: past its wait
	}
	waitNoWaitingSlots(t, r.p, "3 relayed spliced connections")
	for _, c := range held {
		c.Close()
	}
}

// A flow only a name could let through that is refused (its name denied)
// gives its slot back. (Kills the mutant that makes releaseWaiting forget
// the release: every denied connection then kept its slot for good, and a
// client that had MaxWaitingTCPPerClient connections denied was refused
// every further TCP connection.)
func TestNamedDeniedReleasesSlot(t *testing.T) {
	r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
	r.p.cfg.MaxWaitingTCPPerClient = 2
	for range 4 {
		c := r.dial(t, r.tlsDest)
		_ = tls.Client(c, &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots}).Handshake()
		if rec := r.record(t, c, "tls"); rec.Action != "deny" {
			t.Fatalf("record %+v, want denied", rec)
		}
		c.Close()
	}
	waitNoWaitingSlots(t, r.p, "4 denied named connections")
	if n := r.p.Stats().TCPWaitingDrops; n != 0 {
		t.Errorf("tcp_waiting_drops %d, want 0", n)
	}
}
