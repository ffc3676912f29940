package intercept_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH2RefusalsNeedNoWindow: a client that advertises an initial stream
// window of 0 grants a window to 100 live streams (the streams in flight
// bound full), then opens 150 more, each refused (503 past the bound, or
// 403 denied). Had the refusal a body, its handler would wait in the
// server's final flush for a window never granted, holding its request
// and header list (up to 148 KB a stream was measured) for as long as
// the live streams last, counted by neither the bound nor the memory
// reclaim: 250 handlers a connection, not 100. The appliance's own
// answers to an HTTP/2 stream go without a body: HEADERS with END_STREAM,
// which needs no window.
func TestH2RefusalsNeedNoWindow(t *testing.T) {
	for _, kind := range []string{"over-the-bound-503", "denied-403"} {
		t.Run(kind, func(t *testing.T) { refusalsAtZeroWindow(t, kind) })
	}
}

func refusalsAtZeroWindow(t *testing.T, kind string) {
	old := probeInitialWindow
	probeInitialWindow = 0
	defer func() { probeInitialWindow = old }()
	r := newRig(t, testPolicy)
	pc, o := newProbeClient(t, r)
	// A header list of 40 fields, 8 KiB, which each waiting handler holds.
	var fields []hpack.HeaderField
	for i := range 40 {
		fields = append(fields, hpack.HeaderField{Name: fmt.Sprintf("x-pad-%02d", i), Value: strings.Repeat("v", 200)})
	}
	for i := range intercept.MaxStreamsInFlight {
		id := pc.open("GET", fmt.Sprintf("/live/%d", i), true, fields...)
		pc.window(id, 1<<20)
	}
	if !waitFor(t, "100 live streams at the origin", 10*time.Second, func() bool { return o.cur.Load() >= intercept.MaxStreamsInFlight }) {
		t.Fatalf("%d of %d live streams reached the origin", o.cur.Load(), intercept.MaxStreamsInFlight)
	}
	want := "503"
	if kind == "denied-403" {
		want = "403"
		pc.mu.Lock()
		pc.auth = "evil.example.test"
		pc.mu.Unlock()
	}
	var refused []uint32
	for i := range 150 {
		refused = append(refused, pc.open("GET", fmt.Sprintf("/live/x%d", i), true, fields...))
	}
	allEnded := func() bool {
		for _, id := range refused {
			if !pc.streamEnded(id) {
				return false
			}
		}
		return true
	}
	ended := waitFor(t, "every refused stream's END_STREAM", 10*time.Second, allEnded)
	for _, id := range refused {
		if got := pc.status(id); got != want {
			t.Fatalf("refused stream %d: status %q, want %s (statuses %v)", id, got, want, pc.statuses())
		}
	}
	if !ended {
		n := 0
		for _, id := range refused {
			if !pc.streamEnded(id) {
				n++
			}
		}
		t.Errorf("%d of %d refused streams not ended with no stream window granted", n, len(refused))
	}
	// The server's stream handlers (less the origin's own, in this
	// process too) come back to the live streams' once the refusals end.
	handlers := func() int { return runHandlers() - int(o.cur.Load()) }
	if !waitFor(t, "the refused streams' handlers to end", 10*time.Second, func() bool { return handlers() <= intercept.MaxStreamsInFlight+5 }) {
		t.Errorf("one connection holds %d stream handlers, %d past the %d in flight, while its live streams last",
			handlers(), handlers()-intercept.MaxStreamsInFlight, intercept.MaxStreamsInFlight)
	}
}
