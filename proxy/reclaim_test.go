package proxy

import (
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestRelayReclaimedAtCriticalMemory: while memory is critical the
// netstack server resets the newest connections of the client holding
// more than the critical share; each relay ends, its destination
// connection with it, and its record says why.
func TestRelayReclaimedAtCriticalMemory(t *testing.T) {
	r := newStallRig(t, 15*time.Minute)
	var relayed atomic.Int64 // hello came through: the client's conn is accepted and relayed
	dst := destination(t, func(c *net.TCPConn) {
		relayed.Add(1)
		_, _ = io.Copy(io.Discard, c)
	})
	const flows, share = 20, netstack.CriticalMemoryClientFlows
	for range flows {
		r.dial(t, dst)
	}
	for end := time.Now().Add(5 * time.Second); relayed.Load() < flows && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := relayed.Load(); got != flows {
		t.Fatalf("%d flows relayed, want %d", got, flows)
	}
	r.ns.SetMemoryPressure(netstack.MemoryCritical)
	r.p.SetMemoryPressure(netstack.MemoryCritical)
	defer r.ns.SetMemoryPressure(netstack.MemoryAmple)
	for end := time.Now().Add(5 * time.Second); len(r.sink.parse(t)) < flows-share && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(600 * time.Millisecond) // more rounds: none may take more
	recs := r.sink.parse(t)
	if len(recs) != flows-share {
		t.Fatalf("%d records, want %d (the relays reset)", len(recs), flows-share)
	}
	t.Logf("a record: result %q, error %q", recs[0].Result, recs[0].Error)
	for _, rec := range recs {
		if rec.Result != "reset" || !strings.Contains(rec.Error, netstack.ErrMemoryReclaimed.Error()) {
			t.Errorf("record: result %q, error %q; want reset, with %q", rec.Result, rec.Error, netstack.ErrMemoryReclaimed)
		}
	}
	if got := r.p.Stats().TCPActive; got != share {
		t.Errorf("%d relays active, want %d", got, share)
	}
}
