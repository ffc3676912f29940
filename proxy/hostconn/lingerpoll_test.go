package hostconn_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// TestLingerPollBacksOffAndWakes: a linger on a peer that reads nothing
// looks at its socket less often once it has lasted a while (each look
// asks stop: counted here), and WakeLingers makes it look at once, so a
// stop that changed its mind (the stacks closing) still ends it without
// waiting for the next poll. Every linger polled every 50 ms for as long
// as it lasted, up to the 15-minute write-stall timeout: 65% of a core
// for 4,308 lingers in the review.
func TestLingerPollBacksOffAndWakes(t *testing.T) {
	ours, peer := lingerPair(t)
	fillUnread(t, ours, peer)
	var (
		mu       sync.Mutex
		looks    []time.Duration
		stopping atomic.Bool
	)
	errStop := errors.New("the stacks are closing")
	start := time.Now()
	stop := func() error {
		mu.Lock()
		looks = append(looks, time.Since(start))
		mu.Unlock()
		if stopping.Load() {
			return errStop
		}
		return nil
	}
	done := lingerAsync(ours, fixed(time.Hour), stop)
	time.Sleep(3200 * time.Millisecond) // the scenario: a linger that has lasted 3.2 s
	stopping.Store(true)
	woke := time.Now()
	hostconn.WakeLingers()
	select {
	case r := <-done:
		if !errors.Is(r.err, errStop) {
			t.Errorf("Linger: %d unsent, %v; want the stop's error", r.unsent, r.err)
		}
		if d := time.Since(woke); d > 300*time.Millisecond {
			t.Errorf("Linger ended %v after WakeLingers", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Linger still waits 5 s after WakeLingers with stop saying to end")
	}
	mu.Lock()
	defer mu.Unlock()
	late := 0
	for _, at := range looks {
		if at >= 2200*time.Millisecond && at < 3200*time.Millisecond {
			late++
		}
	}
	t.Logf("%d looks in all, %d of them between 2.2 s and 3.2 s", len(looks), late)
	if late > 4 {
		t.Errorf("%d looks at the socket in the second after 2.2 s of lingering; want the poll backed off (a few)", late)
	}
}
