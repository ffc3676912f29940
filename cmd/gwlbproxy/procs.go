package main

// --adapt-procs: GOMAXPROCS fitted to the load (package procs).

import (
	"context"
	"log/slog"

	"github.com/gwlbproxy/gwlbproxy/internal/procs"
)

// adaptProcsUsage is the help text of --adapt-procs.
const adaptProcsUsage = "fit the Go runtime's processors (GOMAXPROCS) to the load: one while the appliance needs " +
	"little CPU, which spares a thread wake-up on most hand-offs between goroutines, all of them (the CPUs, " +
	"or the cgroup's quota) within about 0.1s of the processors in use being nearly saturated. " +
	"A GOMAXPROCS set in the environment turns it off"

// startProcs starts a GOMAXPROCS controller for the appliance's lifetime
// (ctx) and returns what the appliance makes its stacks with; nil when the
// controller is off: adapt is false, GOMAXPROCS was set in the environment
// (goMaxProcsEnv), or there is a single processor to begin with.
func startProcs(ctx context.Context, log *slog.Logger, adapt bool, goMaxProcsEnv string) func(func()) {
	if !adapt {
		return nil
	}
	if goMaxProcsEnv != "" {
		log.Info("GOMAXPROCS is set in the environment: kept as it is, --adapt-procs is off", "GOMAXPROCS", goMaxProcsEnv)
		return nil
	}
	c := procs.New(0, 0)
	if c.Ceiling() <= 1 {
		return nil
	}
	go c.Run(ctx)
	return c.Full
}
