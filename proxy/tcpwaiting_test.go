package proxy

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestSilentConnectionsBounded plays a client that opens TCP connections
// under a domain allow list (so none can be refused on addresses alone)
// and sends nothing: each would hold an upstream connection and the
// sniffing buffers for as long as it liked. Past its share new ones are
// refused, with one record for the lot, and a slot freed by a connection
// that speaks is taken again.
func TestSilentConnectionsBounded(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: deny\n  rules:\n    - {name: ok, domains: [ok.example], action: allow}\n", clsOptions{})
	r.p.cfg.MaxWaitingTCPPerClient = 3
	var held []net.Conn
	for range 3 {
		held = append(held, r.dial(t, r.plainDest))
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.p.Stats().TCPActive < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections waiting, want 3", r.p.Stats().TCPActive)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 5 {
		c := r.dial(t, r.plainDest)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
			t.Fatalf("a connection past the share: %v, want it refused", err)
		}
		c.Close()
	}
	if n := r.p.Stats().TCPWaitingDrops; n != 5 {
		t.Errorf("TCPWaitingDrops = %d, want 5", n)
	}
	// The drop's record goes through the records writer's queue.
	n := 0
	for deadline := time.Now().Add(3 * time.Second); n == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		n = 0
		for _, rec := range r.recs.parse(t) {
			if strings.Contains(rec.Error, "waiting for their first bytes") && rec.Action == "deny" {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("%d drop records, want 1 (one per client every 10 s)\n%s", n, r.recs.String())
	}
	// A held connection speaks: it is classified, and frees its slot.
	if _, err := held[0].Write([]byte("GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	r.record(t, held[0], "http")
	c := r.dial(t, r.plainDest)
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if rec := r.record(t, c, "http"); rec.Action != "deny" || rec.Rule != "default" {
		t.Errorf("the next connection: record %+v, want it classified and denied by default", rec)
	}
	for _, c := range held {
		c.Close()
	}
}
