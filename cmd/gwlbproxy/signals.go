package main

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// signals are the signals the appliance handles, on two channels: a stop
// must never wait behind, or be dropped for, the SIGHUPs before it.
type signals struct {
	// stop carries SIGTERM and SIGINT.
	stop <-chan os.Signal
	// hup carries SIGHUP. Its one slot is the "reload pending" flag: while
	// a reload runs, the first SIGHUP waits there, and signal.Notify, which
	// never blocks, drops the ones after it. A burst so coalesces into one
	// more reload, which reads the file after the last SIGHUP came.
	hup <-chan os.Signal
}

// awaitStart runs start, which builds the appliance, while reading sigs.
// A SIGHUP is remembered (reload: the caller reloads the policy once start
// has returned, since the file may have changed after start read it); a
// SIGTERM or SIGINT makes awaitStart return at once with stop set: nothing
// is served yet, so there is nothing to drain, and the process exits 0.
// What start has opened by then goes with the process (the CA files it may
// be writing are written to a temporary name and renamed; an exit between
// the key's file and the certificate's is recovered from at the next
// start, see certs.LoadOrCreate).
func awaitStart[T any](sigs signals, start func() (T, error)) (v T, reload bool, stop os.Signal, err error) {
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
		case sig := <-sigs.hup:
			slog.Info("signal received during start-up: the policy is reloaded once started", "signal", sig)
			reload = true
		case sig := <-sigs.stop:
			slog.Info("signal received during start-up: stopping", "signal", sig)
			return v, reload, sig, nil
		}
	}
}

// fastDrain is how long a drain started or cut short by SIGINT lasts at
// most: an operator's Ctrl-C, who wants the process gone, records shipped.
const fastDrain = 5 * time.Second

// signalContext is cancelled by the first SIGTERM or SIGINT from sigs; fast
// reports SIGINT, whose drain lasts at most fastDrain. It goes on reading:
// a SIGINT during a drain calls cutDrain (the drain then ends within
// fastDrain, as if it had begun with SIGINT), while a repeated SIGTERM is
// ignored, since supervisors may send it more than once and the full drain
// is what they asked for. onStop runs once, when the first stop signal
// arrives. SIGHUP calls reload, whenever it comes, on a goroutine of its
// own: a reload of a large policy takes a while, and a stop signal is read
// meanwhile; SIGHUPs that come during a reload make one more (signals.hup).
// reloadNow (a SIGHUP caught by awaitStart) makes that goroutine reload
// once before it reads sigs.hup.
func signalContext(sigs signals, reloadNow bool, reload func() error, onStop func(), cutDrain func(time.Duration)) (context.Context, *atomic.Bool) {
	ctx, cancel := context.WithCancel(context.Background())
	var fast atomic.Bool
	go func() {
		if reloadNow {
			_ = reload() // a rejected file is logged; the policy in force stays
		}
		for sig := range sigs.hup {
			slog.Info("signal received", "signal", sig)
			_ = reload()
		}
	}()
	go func() {
		for sig := range sigs.stop {
			switch {
			case ctx.Err() == nil: // the first stop signal
				slog.Info("signal received", "signal", sig)
				fast.Store(sig == syscall.SIGINT)
				onStop()
				cancel()
			case sig == syscall.SIGINT:
				slog.Info("signal received while draining: the drain ends within "+fastDrain.String(), "signal", sig)
				cutDrain(fastDrain)
			default:
				slog.Info("signal received while draining: ignored (SIGINT cuts the drain short)", "signal", sig)
			}
		}
	}()
	return ctx, &fast
}
