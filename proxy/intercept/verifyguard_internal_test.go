package intercept

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestVerifySlots: a client has at most maxClientVerifications under way;
// one more waits, and gives up when its wait runs out; another client is
// not held up; a client with none under way is forgotten.
func TestVerifySlots(t *testing.T) {
	v := newVerifySlots()
	a := clientKey{"vpce-a", netip.MustParseAddr("10.0.0.1")}
	b := clientKey{"vpce-b", netip.MustParseAddr("10.0.0.1")} // the same address behind another endpoint
	var held []func()
	for range maxClientVerifications {
		release, err := v.acquire(a, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, release)
	}
	start := time.Now()
	if _, err := v.acquire(a, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "verifications under way") {
		t.Fatalf("one more for the same client: %v, want it refused once its wait ran out", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("refused after %s, before its wait ran out", d)
	}
	releaseB, err := v.acquire(b, 0)
	if err != nil {
		t.Fatalf("another client: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		release, err := v.acquire(a, 5*time.Second)
		if err == nil {
			release()
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	held[0]()
	if err := <-got; err != nil {
		t.Fatalf("a waiter once a slot is free: %v", err)
	}
	for _, release := range held[1:] {
		release()
	}
	releaseB()
	if n := len(v.per); n != 0 {
		t.Errorf("%d clients remembered with nothing under way", n)
	}
}
