package intercept

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// slotGrants plays clients' waits on v: each wait is granted in turn, and
// its client's name goes to order as it is.
type slotGrants struct {
	t     *testing.T
	v     *verifySlots
	order chan string
	// held holds the release of each grant, in the order granted.
	held chan func()
}

func newSlotGrants(t *testing.T, v *verifySlots) *slotGrants {
	return &slotGrants{t: t, v: v, order: make(chan string, 64), held: make(chan func(), 64)}
}

// wait queues a wait of client's, named name, and returns once it is in
// the queue (or granted at once): the queue's order is the calls'.
func (g *slotGrants) wait(name string, client clientKey) {
	g.t.Helper()
	g.v.mu.Lock()
	before := len(g.v.queue) + g.v.running
	g.v.mu.Unlock()
	go func() {
		release, err := g.v.acquire(client, 10*time.Second)
		if err != nil {
			g.order <- name + ": " + err.Error()
			return
		}
		g.held <- release
		g.order <- name
	}()
	for deadline := time.Now().Add(5 * time.Second); ; {
		g.v.mu.Lock()
		n := len(g.v.queue) + g.v.running
		g.v.mu.Unlock()
		if n > before {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s's wait never queued", name)
		}
		time.Sleep(time.Millisecond)
	}
}

// next returns the name of the next wait granted.
func (g *slotGrants) next() string {
	g.t.Helper()
	select {
	case name := <-g.order:
		return name
	case <-time.After(5 * time.Second):
		g.t.Fatal("no wait granted")
		return ""
	}
}

// TestVerifySlotsTurns: with one slot for everyone (a 2-processor
// appliance), clients with as many under way take turns, the one granted
// least recently first: an honest client's one mint, queued behind
// another client's many, waits for one of them, not all. Before, the
// freed slot went to the first waiter of the clients with none under way,
// and the client whose mint had just ended had none again: it took the
// slot back for each of its own queued first (review rev30b F1).
func TestVerifySlotsTurns(t *testing.T) {
	v := newVerifySlots()
	v.limit = func() int { return 1 }
	hostile := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.66")}
	other := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.67")}
	honest := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.7")}
	g := newSlotGrants(t, v)
	g.wait("hostile", hostile) // granted at once
	if got := g.next(); got != "hostile" {
		t.Fatalf("first grant %q", got)
	}
	for range 4 {
		g.wait("hostile", hostile)
	}
	g.wait("other", other)
	g.wait("other", other)
	g.wait("honest", honest)
	// Then, one at a time: the hostile client's under way ends, and the
	// slot goes on. honest and other were granted none yet, other queued
	// first; then hostile, granted least recently; and so on in turn.
	want := []string{"other", "honest", "hostile", "other", "hostile", "hostile", "hostile"}
	var got []string
	for range want {
		(<-g.held)()
		got = append(got, g.next())
	}
	(<-g.held)()
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("grants in the order %q, want %q", got, want)
		}
	}
	// A client granted recently, waiting again, goes behind one granted
	// less recently, not ahead by the queue's order.
	g.wait("hostile", hostile) // granted at once: nothing under way
	if got := g.next(); got != "hostile" {
		t.Fatalf("grant %q", got)
	}
	g.wait("honest", honest) // came back: forgotten, as if new
	g.wait("hostile", hostile)
	g.wait("honest", honest)
	g.wait("other", other)
	want = []string{"honest", "other", "hostile", "honest"}
	got = got[:0]
	for range want {
		(<-g.held)()
		got = append(got, g.next())
	}
	(<-g.held)()
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("grants in the order %q, want %q", got, want)
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.running != 0 || len(v.queue) != 0 || len(v.per) != 0 {
		t.Errorf("left: %d under way, %d waiting, %d clients", v.running, len(v.queue), len(v.per))
	}
}

// TestVerifySlotsFloodLimitOne: a client that keeps 40 mints queued (an
// RSA-4096 CA's, about 5 ms each: a fresh name per connection), each
// queued again as soon as it ends, and an honest client's one mint,
// queued behind them: with one slot for everyone (a 2-processor
// appliance), the honest one is served after at most the one under way
// and one more; with two, after at most the one under way. Before, at a
// limit of one it waited behind every mint queued before it, 19 of them
// in the review's run before its (shortened) wait ran out (review rev30b
// F1).
func TestVerifySlotsFloodLimitOne(t *testing.T) {
	for _, limit := range []int{1, 2} {
		v := newVerifySlots()
		v.limit = func() int { return limit }
		hostile := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.66")}
		honest := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.7")}
		const queued = 40
		var wg sync.WaitGroup
		var mu sync.Mutex
		served := 0
		stop := make(chan struct{})
		for range queued {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					release, err := v.acquire(hostile, 10*time.Second)
					if err != nil {
						continue
					}
					time.Sleep(5 * time.Millisecond) // the mint: load, not a proof
					mu.Lock()
					served++
					mu.Unlock()
					release()
				}
			})
		}
		qlen := func() int { v.mu.Lock(); defer v.mu.Unlock(); return len(v.queue) }
		for deadline := time.Now().Add(5 * time.Second); qlen() < queued-maxClientVerifications; {
			if time.Now().After(deadline) {
				t.Fatalf("limit %d: %d of the flood's mints queued, want %d", limit, qlen(), queued-maxClientVerifications)
			}
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		base := served
		mu.Unlock()
		start := time.Now()
		release, err := v.acquire(honest, 5*time.Second)
		took := time.Since(start)
		mu.Lock()
		before := served - base
		mu.Unlock()
		if err == nil {
			release()
		}
		close(stop)
		wg.Wait()
		t.Logf("limit %d: honest mint served after %v, %d of the flood's before it", limit, took, before)
		if err != nil || before > 2 {
			t.Errorf("limit %d: the honest client's one mint waited behind %d of the flood's (err %v)", limit, before, err)
		}
	}
}

// TestVerifySlotsReturningClientsTakeTurns: a client is forgotten once
// its one wait ends, and comes back with its next; counted then as never
// granted, two hostile clients each keeping one mint in flight took every
// turn at a limit of one, ahead of an honest client's second wait (a page
// opening two fresh names), which was never served (review rev30d F1).
// It must be served within one turn of each other client.
func TestVerifySlotsReturningClientsTakeTurns(t *testing.T) {
	v := newVerifySlots()
	v.limit = func() int { return 1 }
	h1 := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.66")}
	h2 := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.67")}
	honest := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.7")}
	g := newSlotGrants(t, v)
	g.wait("honest", honest)
	if got := g.next(); got != "honest" {
		t.Fatalf("first grant %q, want honest's", got)
	}
	g.wait("honest", honest) // its second fresh name waits
	g.wait("h1", h1)
	(<-g.held)() // honest's first ends
	got := []string{g.next()}
	for i := range 4 {
		// The other hostile client queues its next while this one's runs.
		if i%2 == 0 {
			g.wait("h2", h2)
		} else {
			g.wait("h1", h1)
		}
		(<-g.held)()
		got = append(got, g.next())
	}
	if i := slices.Index(got, "honest"); i < 0 || i > 2 {
		t.Errorf("grants after honest's first: %q; want honest's second within one turn of each of the two others", got)
	}
	// Hand back what is held until every wait has had its grant.
	for quiet := false; !quiet; {
		select {
		case release := <-g.held:
			release()
		case <-time.After(200 * time.Millisecond):
			quiet = true
		}
	}
}
