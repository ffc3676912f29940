package appliance

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// serveHealth answers the GWLB target group's health check on "/": 200
// while the appliance serves, 503 while it drains (so that the GWLB, once
// enough checks have failed, sends new flows elsewhere while the open ones
// finish: --drain-min covers the checks) or while it is broken.
// The body says which, for a person reading it with curl.
func (a *Appliance) serveHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if a.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "gwlbproxy: draining")
		return
	}
	why := a.broken(a.records.Stats())
	// The GWLB checks several times an interval: log changes only.
	if was := a.wasBroken.Swap(len(why) > 0); was != (len(why) > 0) {
		if was {
			slog.Info("health check passes again")
		} else {
			slog.Error("health check fails: broken", "why", why)
		}
	}
	if len(why) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "gwlbproxy: broken: %s\n", strings.Join(why, "; "))
		return
	}
	fmt.Fprintln(w, "gwlbproxy: serving")
}

// broken says why the appliance cannot do its job, or nothing while it
// can. Only what is known for sure counts: the GENEVE readers have stopped
// (no packet from the GWLB is read; during a drain that is expected), or
// for longer than RecordStall (--record-stall, 30 s) the access records have waited behind a
// blocked or slow sink, been dropped without a break, or kept failing to be
// written (records.Stats.FailingSeconds). Then new flows would go unaudited, and the GWLB should send them
// to another target. So should it while memory is critical (watchMemory;
// not for the kernel's TCP memory, see memoryReport),
// or while the appliance's own addresses have never been read (neither
// through netlink nor from /proc: proxy.OwnAddrsKnown): new flows are
// refused here then, and another target can take them. Idleness is not
// broken: no traffic is normal.
func (a *Appliance) broken(rs records.Stats) []string {
	var why []string
	if a.geneveDown.Load() && !a.draining.Load() {
		why = append(why, "GENEVE readers stopped")
	}
	limit := a.opts.RecordStall.Seconds()
	if d := a.netstack.ReadFailingFor(); d.Seconds() > limit && !a.draining.Load() {
		why = append(why, fmt.Sprintf("a GENEVE reader has read nothing but errors for %.1fs", d.Seconds()))
	}
	if rs.LagSeconds > limit {
		why = append(why, fmt.Sprintf("access records waiting %.1fs for a blocked or slow sink", rs.LagSeconds))
	}
	if rs.DroppingSeconds > limit {
		why = append(why, fmt.Sprintf("access records dropped for %.1fs (%d in all): the queue is full", rs.DroppingSeconds, rs.Dropped))
	}
	if rs.FailingSeconds > limit {
		why = append(why, fmt.Sprintf("access record sink failing for %.1fs (%d records not written): %s", rs.FailingSeconds, rs.Failed, rs.LastError))
	}
	if m := a.memoryCritical.Load(); m != nil {
		why = append(why, *m)
	}
	if !a.proxy.OwnAddrsKnown() {
		why = append(why, "the appliance's own addresses could not be read (netlink and /proc/self/net both failed): every flow is refused until they can be")
	}
	return why
}
