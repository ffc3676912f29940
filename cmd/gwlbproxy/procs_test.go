package main

import (
	"bytes"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestAdaptProcsFlag: --adapt-procs is on unless turned off, --help says
// what it does, and the controller stays off when turned off or when
// GOMAXPROCS is set in the environment (the operator's choice, logged).
func TestAdaptProcsFlag(t *testing.T) {
	_, p, err := parseArgs(nil, &bytes.Buffer{})
	if err != nil || !p.adaptProcs {
		t.Fatalf("default: adaptProcs %v, %v; want on", p.adaptProcs, err)
	}
	_, p, err = parseArgs([]string{"--adapt-procs=false"}, &bytes.Buffer{})
	if err != nil || p.adaptProcs {
		t.Fatalf("--adapt-procs=false: adaptProcs %v, %v; want off", p.adaptProcs, err)
	}
	var help bytes.Buffer
	parseArgs([]string{"--help"}, &help)
	if !strings.Contains(help.String(), "-adapt-procs") || !strings.Contains(help.String(), "GOMAXPROCS set in the environment turns it off") {
		t.Errorf("--help does not describe --adapt-procs:\n%s", help.String())
	}

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if c, stop := startProcs(log, false, ""); c != nil {
		stop()
		t.Error("--adapt-procs=false started the controller")
	}
	if c, stop := startProcs(log, true, "3"); c != nil {
		stop()
		t.Error("GOMAXPROCS=3 in the environment: the controller started anyway")
	}
	if !strings.Contains(logs.String(), "--adapt-procs is off") || !strings.Contains(logs.String(), "GOMAXPROCS=3") {
		t.Errorf("GOMAXPROCS in the environment was not logged: %q", logs.String())
	}
}

// TestAdaptProcsOn: on, with processors to adapt, the controller runs: it
// lowers an idle process to one processor, the stacks are made at the
// ceiling through the function it returns, and stop leaves GOMAXPROCS at
// the ceiling.
func TestAdaptProcsOn(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	c, stop := startProcs(slog.New(slog.DiscardHandler), true, "")
	if c == nil {
		stop()
		t.Fatal("--adapt-procs with 3 processors: no controller")
	}
	// This test process is idle: the controller lowers it after its
	// quiet second.
	for deadline := time.Now().Add(10 * time.Second); runtime.GOMAXPROCS(0) != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("an idle process left at GOMAXPROCS %d for 10s, want 1", runtime.GOMAXPROCS(0))
		}
	}
	seen := 0
	c.Full(func() { seen = runtime.GOMAXPROCS(0) })
	if seen != 3 {
		t.Errorf("a stack would be made at GOMAXPROCS %d, want the ceiling 3", seen)
	}
	stop()
	if n := runtime.GOMAXPROCS(0); n != 3 {
		t.Errorf("after stop GOMAXPROCS is %d, want the ceiling 3", n)
	}
}
