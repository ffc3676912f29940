package main

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
)

// awaitStart runs start, which builds the appliance, while reading sigs.
// A SIGHUP is remembered (reload: the caller reloads the policy once start
// has returned, since the file may have changed after start read it); a
// SIGTERM or SIGINT makes awaitStart return at once with stop set: nothing
// is served yet, so there is nothing to drain, and the process exits 0.
// What start has opened by then goes with the process (the CA files it may
// be writing are written to a temporary name and renamed).
func awaitStart[T any](sigs <-chan os.Signal, start func() (T, error)) (v T, reload bool, stop os.Signal, err error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := start()
		done <- result{v, err}
	}()
	for {
		select {
		case r := <-done:
			return r.v, reload, nil, r.err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				slog.Info("signal received during start-up: the policy is reloaded once started", "signal", sig)
				reload = true
				continue
			}
			slog.Info("signal received during start-up: stopping", "signal", sig)
			return v, reload, sig, nil
		}
	}
}

// signalContext is cancelled by SIGTERM or SIGINT from sigs; fast reports
// SIGINT, which drains for at most a few seconds. SIGHUP calls reload.
// onStop runs once, when the first stop signal arrives.
func signalContext(sigs <-chan os.Signal, reload func() error, onStop func()) (context.Context, *atomic.Bool) {
	ctx, cancel := context.WithCancel(context.Background())
	var fast atomic.Bool
	go func() {
		for sig := range sigs {
			slog.Info("signal received", "signal", sig)
			if sig == syscall.SIGHUP {
				_ = reload()
				continue
			}
			fast.Store(sig == syscall.SIGINT)
			onStop()
			cancel()
			return
		}
	}()
	return ctx, &fast
}
