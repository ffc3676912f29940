package appliance

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// The drain's time budget. A drain of D seconds serves flows for D less
// the flush reserve, then closes what is left and ships the last records
// within the reserve: the process exits within D plus a moment, so that a
// systemd TimeoutStopSec (or the GWLB's deregistration delay) set to D plus
// a margin never has to kill it with records unshipped.
const (
	minFlushReserve = time.Second
	maxFlushReserve = 10 * time.Second
)

// flushReserve is the part of a drain of d kept for the last records: a
// fifth, at least a second and at most ten, and never more than half.
func flushReserve(d time.Duration) time.Duration {
	return min(max(d/5, minFlushReserve), maxFlushReserve, d/2)
}

// drainCut is a request to end a drain sooner (CutDrain). Its zero value
// is ready to use.
type drainCut struct {
	mu       sync.Mutex
	ch       chan struct{} // closed by the first cut
	deadline time.Time     // the drain ends by then
	within   time.Duration // how long from the cut that was
}

// done is closed once the drain has been cut.
func (c *drainCut) done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

// cut records the first cut; later ones change nothing.
func (c *drainCut) cut(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	select {
	case <-c.ch:
		return
	default:
	}
	c.deadline, c.within = time.Now().Add(d), d
	close(c.ch)
}

func (c *drainCut) get() (time.Time, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadline, c.within
}

// CutDrain makes the drain end within d of now, if it would end later:
// main calls it on a SIGINT that follows the SIGTERM which began a long
// drain. Flows get d less its flush reserve, as a drain of d would give
// them; the records are written in that reserve. Only the first call
// counts; one made before the drain begins applies once it does.
func (a *Appliance) CutDrain(d time.Duration) { a.cut.cut(d) }

// drainFlows serves the flows, new ones too, until hold (the drain's
// minimum, DrainMin from its start) whether any is open or not, then until
// none is left; or until the drain's time for flows (end less reserve)
// passes, if sooner. It returns the drain's end and reserve: earlier ones
// if CutDrain cut it meanwhile, which bounds the minimum too.
func (a *Appliance) drainFlows(hold, end time.Time, reserve time.Duration) (time.Time, time.Duration) {
	cut := a.cut.done()
	for {
		ctx, cancel := context.WithDeadline(context.Background(), end.Add(-reserve))
		go func(cut <-chan struct{}) {
			select {
			case <-cut:
				cancel()
			case <-ctx.Done():
			}
		}(cut)
		err := a.holdThenWait(ctx, hold)
		cancel()
		if err == nil {
			return end, reserve
		}
		select {
		case <-cut:
		default: // cut already applied (nil), or not cut: the time is up
			if n := a.proxy.Active(); n > 0 {
				slog.Warn("drain time for flows passed with flows still open", "active_flows", n)
			}
			return end, reserve
		}
		cut = nil
		if deadline, within := a.cut.get(); deadline.Before(end) {
			end, reserve = deadline, min(reserve, flushReserve(within))
			slog.Info("drain cut short", "within", within, "flush_reserve", reserve, "active_flows", a.proxy.Active())
		}
	}
}

// holdThenWait waits until hold, then until no flow is open, each only
// while ctx lasts. The hold is what keeps a drain with no flow open from
// ending at once: the GWLB goes on sending new flows here until its health
// checks have seen the 503 (UnhealthyThresholdCount of them, an interval
// apart), and a process gone by then leaves them to hang on a closed port.
func (a *Appliance) holdThenWait(ctx context.Context, hold time.Time) error {
	if d := time.Until(hold); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			slog.Info("drain minimum passed", "active_flows", a.proxy.Active())
		}
	}
	return a.proxy.Wait(ctx)
}

// untilCut returns a context that ends at due or, once CutDrain has cut
// the drain (before or meanwhile), at at(the cut's deadline, its within)
// if that is sooner, but never before floor: a cut bounds every phase of
// the drain, not only the wait for flows, so that "the drain ends within
// 5s" holds while the records are flushed to a sink that does not answer;
// and the phase keeps the least time it has without a cut (the records of
// the flows the stacks just ended need a moment to come, and the sinks one
// to take them), which a cut whose time has passed would otherwise take.
func (a *Appliance) untilCut(due, floor time.Time, at func(deadline time.Time, within time.Duration) time.Time) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithDeadline(context.Background(), due)
	cut := a.cut.done()
	go func() {
		select {
		case <-ctx.Done():
			return
		case <-cut:
		}
		when := at(a.cut.get())
		if when.Before(floor) {
			when = floor
		}
		t := time.NewTimer(time.Until(when))
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			cancel()
		}
	}()
	return ctx, cancel
}
