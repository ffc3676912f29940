package appliance

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

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

// drainFlows serves the open flows until none is left or the drain's time
// for flows (end less reserve) passes, and returns the drain's end and
// reserve: earlier ones if CutDrain cut it meanwhile.
func (a *Appliance) drainFlows(end time.Time, reserve time.Duration) (time.Time, time.Duration) {
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
		err := a.proxy.Wait(ctx)
		cancel()
		if err == nil {
			return end, reserve
		}
		select {
		case <-cut:
		default: // cut already applied (nil), or not cut: the time is up
			slog.Warn("drain time for flows passed with flows still open", "active_flows", a.proxy.Active())
			return end, reserve
		}
		cut = nil
		if deadline, within := a.cut.get(); deadline.Before(end) {
			end, reserve = deadline, min(reserve, flushReserve(within))
			slog.Info("drain cut short", "within", within, "flush_reserve", reserve, "active_flows", a.proxy.Active())
		}
	}
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
