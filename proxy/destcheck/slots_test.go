package destcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// zoneResolver never answers names under slow.test (a zone whose servers
// do not answer), and answers every other name with 192.0.2.1 after delay
// (a recursion the resolver's cache does not hold). It counts the
// questions about slow.test.
func zoneResolver(t *testing.T, delay time.Duration) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var slow atomic.Int64
	go serveQuestions(pc, func(h dnsmessage.Header, q dnsmessage.Question, reply func([]byte)) {
		if strings.HasSuffix(q.Name.String(), ".slow.test.") {
			slow.Add(1)
			return
		}
		time.AfterFunc(delay, func() {
			m := dnsmessage.Message{Header: dnsmessage.Header{ID: h.ID, Response: true, RecursionAvailable: true}, Questions: []dnsmessage.Question{q}}
			if q.Type == dnsmessage.TypeA {
				m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60},
					Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}}}}
			}
			b, _ := m.Pack()
			reply(b)
		})
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort(), &slow
}

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out", what)
		}
	}
}

// checkWithin is a check with a 10 s context (a TLS check's dial timeout)
// that reports how long it took.
func checkWithin(c *Checker, endpoint, name string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := c.Check(ctx, endpoint, name, addr("192.0.2.1"))
	return time.Since(start), err
}

// TestLookupFloodLeavesOtherEndpointsSlots: one endpoint's clients send 64
// fresh names at once under a zone whose servers never answer. The
// endpoint gets 40 of the 64 slots (the rest wait for more than 24 to be
// free), and another endpoint's checks of new names find slots free: none
// waits for one. Before 6a0904e, the share applied only once all 64 were
// claimed, so the first endpoint took all 64 for the whole LookupTimeout;
// the other endpoint's lookups waited for a slot within their own
// LookupTimeout and failed, "did not answer" though the resolver was never
// asked. From 6a0904e until the queue beyond the share, the flooding
// endpoint's other 24 names were refused at once.
func TestLookupFloodLeavesOtherEndpointsSlots(t *testing.T) {
	const timeout = 1500 * time.Millisecond
	res, slow := zoneResolver(t, 50*time.Millisecond)
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: timeout}, nil) // 64 slots, a share of 8
	// Refused, or failed but for the resolver's silence:
	var refused atomic.Int64
	var flood sync.WaitGroup
	for i := range 64 {
		flood.Go(func() {
			if _, err := checkWithin(c, epA, fmt.Sprintf("f%d.slow.test", i)); !strings.Contains(err.Error(), "did not answer") {
				refused.Add(1)
			}
		})
	}
	waitFor(t, "the flood's questions and queue", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return slow.Load() >= 80 && c.slots.overShare.len() == 24
	})
	c.callMu.Lock()
	running, own := c.slots.running, c.callsBy[epA]
	c.callMu.Unlock()
	if running != 40 || own != 40 {
		t.Errorf("during the flood %d slots are held, %d lookups are the flooding endpoint's; want 40 and 40", running, own)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for i, after := range []time.Duration{0, 10 * time.Millisecond, 30 * time.Millisecond, timeout / 3, 2 * timeout / 3} {
		wg.Go(func() {
			time.Sleep(after)
			d, err := checkWithin(c, epB, fmt.Sprintf("v%d.fast.test", i))
			if err != nil || d >= timeout*2/3 {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("at +%v: %v after %v", after, err, d.Round(time.Millisecond)))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	flood.Wait()
	for _, f := range failed {
		t.Errorf("another endpoint's check of a new name during the flood, %s; want it passed without waiting for a slot", f)
	}
	if n := refused.Load(); n != 0 {
		t.Errorf("%d of the flooding endpoint's 64 new names refused or not asked, want none: the 24 beyond 40 wait for the first to end", n)
	}
	wantSlotInvariants(t, c)
}

// TestLookupSustainedFloodOtherEndpoint: one endpoint's clients send 64
// fresh never-answered names again each time the last ones ended, while
// another endpoint checks a new name every 100 ms. Every one of the other
// endpoint's checks passes, none waiting long. Before, about a quarter of
// them failed, refused by their own endpoint's share: their lookups,
// waiting for a slot behind the flood, counted against it.
func TestLookupSustainedFloodOtherEndpoint(t *testing.T) {
	const timeout = 1500 * time.Millisecond
	res, _ := zoneResolver(t, 50*time.Millisecond)
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: timeout}, nil)
	stop := make(chan struct{})
	var flood sync.WaitGroup
	flood.Go(func() {
		for round := 0; ; round++ {
			var wg sync.WaitGroup
			for i := range 64 {
				wg.Go(func() { checkWithin(c, epA, fmt.Sprintf("r%d-%d.slow.test", round, i)) })
			}
			wg.Wait()
			select {
			case <-stop:
				return
			default:
			}
		}
	})
	time.Sleep(100 * time.Millisecond)
	var mu sync.Mutex
	var failed []string
	var slowest time.Duration
	var wg sync.WaitGroup
	for i := range 30 { // three rounds of the flood
		wg.Go(func() {
			time.Sleep(time.Duration(i) * 100 * time.Millisecond)
			d, err := checkWithin(c, epB, fmt.Sprintf("v%d.fast.test", i))
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, d)
			if err != nil {
				failed = append(failed, err.Error())
			}
		})
	}
	wg.Wait()
	close(stop)
	flood.Wait()
	if len(failed) > 0 || slowest >= timeout { // one that waited for a slot waits about a LookupTimeout
		t.Errorf("%d of another endpoint's 30 checks failed during a sustained flood, the slowest took %v: %q", len(failed), slowest.Round(time.Millisecond), failed)
	}
}

// TestLookupSlotWait: with every slot held, a lookup waits for one, and
// its LookupTimeout starts once it has it: the time it waited does not
// cut the resolver's. A lookup that gets no slot within another
// LookupTimeout and a margin fails saying so, a lookup error (not a mismatch, since the
// resolver was never asked), and its failure is not cached as the name's:
// the next check looks the name up. Before, the wait was inside the
// lookup's own LookupTimeout, and a lookup that waited long failed as the
// resolver's silence, cached for FailureTTL.
func TestLookupSlotWait(t *testing.T) {
	const timeout = 500 * time.Millisecond
	res, slow := zoneResolver(t, 300*time.Millisecond)
	// Two slots, a share of one: each endpoint below holds one lookup.
	c := newTestChecker(t, Config{Resolver: res, LookupTimeout: timeout, MaxLookups: 2}, nil)
	var wg sync.WaitGroup
	for i := range 2 { // hold both slots for the whole LookupTimeout
		wg.Go(func() { checkWithin(c, fmt.Sprintf("vpce-%017x", i), fmt.Sprintf("h%d.slow.test", i)) })
	}
	waitFor(t, "both slots taken", func() bool { return slow.Load() >= 4 })
	time.Sleep(100 * time.Millisecond)
	// These two wait 400 ms for a slot, then their answers take 300 ms:
	// 700 ms after their checks began, more than one LookupTimeout.
	var waited [2]struct {
		d   time.Duration
		err error
	}
	for i := range 2 {
		wg.Go(func() {
			waited[i].d, waited[i].err = checkWithin(c, fmt.Sprintf("vpce-%017x", 2+i), fmt.Sprintf("w%d.fast.test", i))
		})
		waitFor(t, "a lookup waiting for a slot", func() bool {
			c.callMu.Lock()
			defer c.callMu.Unlock()
			return len(c.calls) == 3+i // two holding slots, and these
		})
	}
	// This one comes last: the slots the two above get are held until
	// about 800 ms, and it gives up about 725 ms.
	d, err := checkWithin(c, "vpce-00000000000000004", "late.fast.test")
	var le *LookupError
	if err == nil || !strings.Contains(err.Error(), "no lookup slot came free within 625ms") || !errors.As(err, &le) {
		t.Errorf("a lookup that got no slot: %v (%T), want a lookup error saying no slot came free", err, err)
	}
	if d < timeout-50*time.Millisecond {
		t.Errorf("the lookup without a slot failed after %v, want after its wait of %v", d, timeout)
	}
	if st, err := c.resolvedState("late.fast.test", addr("192.0.2.1"), c.clock()); st != stateLookup {
		t.Errorf("after a lookup got no slot, the name's state is %d (%v), want %d: looked up by the next check", st, err, stateLookup)
	}
	wg.Wait()
	for i, w := range waited {
		if w.err != nil {
			t.Errorf("a lookup that waited %d for a slot: %v after %v, want the resolver's answer", i, w.err, w.d.Round(time.Millisecond))
		}
	}
	if _, err := checkWithin(c, "vpce-00000000000000004", "late.fast.test"); err != nil {
		t.Errorf("the name that got no slot, checked again with slots free: %v", err)
	}
}

// Close ends a lookup waiting for a slot too: its check fails as closed,
// and Close does not wait out the wait's LookupTimeout.
func TestCloseEndsSlotWait(t *testing.T) {
	res, slow := zoneResolver(t, 0)
	c := newChecker(Config{Resolver: res, LookupTimeout: 10 * time.Second, MaxLookups: 1}, time.Now)
	held := make(chan error, 1)
	go func() { _, err := checkWithin(c, epA, "h.slow.test"); held <- err }()
	waitFor(t, "the slot taken", func() bool { return slow.Load() >= 2 })
	waiting := make(chan error, 1)
	go func() { _, err := checkWithin(c, epB, "w.fast.test"); waiting <- err }()
	waitFor(t, "a lookup waiting for a slot", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return len(c.calls) == 2
	})
	start := time.Now()
	c.Close()
	for _, ch := range []chan error{held, waiting} {
		if err := <-ch; !errors.Is(err, ErrClosed) {
			t.Errorf("check during Close: %v", err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %s", d)
	}
}
