package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
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

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if full := startProcs(ctx, log, false, ""); full != nil {
		t.Error("--adapt-procs=false started the controller")
	}
	if full := startProcs(ctx, log, true, "3"); full != nil {
		t.Error("GOMAXPROCS=3 in the environment: the controller started anyway")
	}
	if !strings.Contains(logs.String(), "--adapt-procs is off") || !strings.Contains(logs.String(), "GOMAXPROCS=3") {
		t.Errorf("GOMAXPROCS in the environment was not logged: %q", logs.String())
	}
}
