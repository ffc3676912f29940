package intercept

import (
	"errors"
	"testing"
	"time"
)

// TestUpstreamWaitsShareOneTimer: with a session's waits for an upstream
// connection on one timer, each is still bounded on its own: a wait that
// ended is never refused, and one still waiting is refused once the bound
// has passed since the upstream's last progress (here another request
// getting its connection); the timer stops with the last wait.
func TestUpstreamWaitsShareOneTimer(t *testing.T) {
	const bound = 50 * time.Millisecond
	old := upstreamWaitTimeout.Load()
	upstreamWaitTimeout.Store(bound)
	defer upstreamWaitTimeout.Store(old)
	w := newUpstreamWait(func() int64 { return 0 })
	refused := make(chan *headDeadline, 3)
	start := time.Now()
	newWait := func() *headDeadline {
		d := &headDeadline{}
		d.cancel = func(err error) {
			if errors.Is(err, errUpstreamWait) {
				refused <- d
			}
		}
		d.startWait(w)
		return d
	}
	ended, got, waiting := newWait(), newWait(), newWait()
	ended.mu.Lock()
	ended.endWait()
	ended.mu.Unlock()
	got.mu.Lock()
	got.gotConnection()
	got.mu.Unlock()
	select {
	case d := <-refused:
		if d != waiting {
			t.Fatal("a request whose wait had ended was refused")
		}
		if since := time.Since(start); since < bound {
			t.Errorf("refused after %v, before the bound (%v)", since, bound)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting request was not refused")
	}
	select {
	case <-refused:
		t.Fatal("a second request was refused")
	case <-time.After(3 * bound):
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting != nil || !w.timerDue.IsZero() {
		t.Errorf("after the last wait: waiting %v, timer due %v", w.waiting != nil, w.timerDue)
	}
}
