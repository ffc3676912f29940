package main

// --adapt-procs: GOMAXPROCS fitted to the load (package procs).

import (
	"context"
	"log/slog"

	"github.com/gwlbproxy/gwlbproxy/internal/procs"
)

// adaptProcsUsage is the help text of --adapt-procs.
const adaptProcsUsage = "fit the Go runtime's processors (GOMAXPROCS) to the load: one while the appliance needs " +
	"little CPU, which spares a thread wake-up on most hand-offs between goroutines; all of them (as the runtime chose " +
	"at start: the CPUs, or the cgroup's quota) within 0.2-0.3s of the processors in use being three-quarters busy " +
	"or goroutines queueing for them, kept only if the GENEVE bytes carried per second rise by a tenth (else not " +
	"tried again for 10s to a minute); under a moderate load one processor fewer is tried now and then, and kept " +
	"unless the higher count carried a tenth more. A GOMAXPROCS set in the environment turns it off"

// startProcs starts a GOMAXPROCS controller and returns it (the appliance
// makes its stacks through its Full, and gives it the work to judge raises
// by), and stop, which ends the controller and waits for it to restore the
// ceiling. The controller is off, nil, when adapt is false, when GOMAXPROCS
// was set in the environment (goMaxProcsEnv), or when there is a single
// processor to begin with.
func startProcs(log *slog.Logger, adapt bool, goMaxProcsEnv string) (c *procs.Controller, stop func()) {
	if !adapt {
		return nil, func() {}
	}
	if goMaxProcsEnv != "" {
		log.Info("GOMAXPROCS is set in the environment: kept as it is, --adapt-procs is off", "GOMAXPROCS", goMaxProcsEnv)
		return nil, func() {}
	}
	c = procs.New(0, 0)
	if c.Ceiling() <= 1 {
		return nil, func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	return c, func() {
		cancel()
		<-done
	}
}
