package proxy

import (
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
)

// Wall-clock steps. A test cannot step the machine's clock, so it feeds
// the stamps a step leaves behind: one taken an instant before a step back
// of an hour is an hour ahead of the wall clock after it. wallStepped
// stands for the step itself: the wall clock moves by step, the relays'
// clock (monoclock.Now) does not.

// wallStepped has the relays' clock read as if the wall clock had been
// stepped by step since the stamps were taken (monoclock.Now = wall - step),
// until the test ends.
func wallStepped(t *testing.T, step time.Duration) {
	monoclock.Shift(-step)
	t.Cleanup(func() { monoclock.Shift(step) })
}

// TestUDPDeadlineWallStepBack: a UDP flow idle since an instant before the
// wall clock stepped back an hour ends after its idle (or unanswered)
// timeout, not the step's length more. On the wall clock its deadline
// (time.Unix of the stamp) was an hour and two minutes away, keeping its
// host socket and its client's share (--max-udp-flows-per-client) as long.
func TestUDPDeadlineWallStepBack(t *testing.T) {
	step := -time.Hour
	wallStepped(t, step)
	before := time.Now().Add(-step).UnixNano() // the stamp of its last datagram
	p := &Proxy{}
	p.cfg.UDPIdleTimeout = 120 * time.Second
	p.cfg.UDPUnansweredTimeout = 30 * time.Second
	for _, c := range []struct {
		name    string
		bytesIn int64
		want    time.Duration
	}{
		{"answered", 1, p.cfg.UDPIdleTimeout},
		{"unanswered", 0, p.cfg.UDPUnansweredTimeout},
	} {
		f := &udpFlow{p: p, bytesIn: c.bytesIn}
		f.last.Store(before)
		if left := time.Until(f.deadline()); left > c.want {
			t.Errorf("%s: an idle UDP flow ends in %v, want at most %v", c.name, left.Round(time.Second), c.want)
		}
	}
}

// TestIdleLeftWallStepBack: a held denied UDP flow or a denied echo flow
// (idleLeft) idle since a minute before the wall clock stepped back an
// hour has run out its 30 s; one idle since an instant before has at most
// its 30 s left.
func TestIdleLeftWallStepBack(t *testing.T) {
	step := -time.Hour
	wallStepped(t, step)
	idle := 30 * time.Second
	if left := idleLeft(time.Now().Add(-step-time.Minute).UnixNano(), idle); left > 0 {
		t.Errorf("idle a minute before the step: %v left of %v, want none", left.Round(time.Second), idle)
	}
	if left := idleLeft(time.Now().Add(-step).UnixNano(), idle); left > idle || left < idle-time.Second {
		t.Errorf("idle an instant before the step: %v left, want %v", left.Round(time.Second), idle)
	}
}
