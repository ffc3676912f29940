package intercept

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
)

// A deny of the connection's name decided under a wait's context that a
// request (decideName, as refuseDeniedName) took before the wait was
// cancelled stands: the request was refused by it, so the cancel does not
// put the name back undecided, which would have the next request decided
// afresh and the tls record not say the deny a request enforced. Undone
// only when no one else took it (review r8s28 F3). The order is the one a
// request landing between the wait's decision and its settleName has,
// made here in turn.
func TestSettleNameKeepsADenyARequestTook(t *testing.T) {
	before, after := checkOnPolicies(t, "www.example.test")
	dest := netip.MustParseAddrPort("192.0.2.10:443")
	for _, requestTook := range []bool{false, true} {
		checks := 0
		ic, holder := checkingInterceptor(before, func(ctx context.Context, _, name string, _ netip.Addr) error {
			checks++
			return errors.New(name + " resolves to 203.0.113.9")
		})
		a, b := net.Pipe()
		s := pipeSession(ic, a, "tls", dest)
		namedTo(s, "www.example.test", before)
		holder.Store(after)

		ctx, cancel := context.WithCancel(context.Background())
		if v := s.decideNameCtx(ctx, after); v.why == "" || !v.byCheck {
			t.Fatalf("the wait's decision: %+v, want the name denied for its check", v)
		}
		if requestTook {
			if v := s.decideName(after); v.why == "" {
				t.Fatalf("the request's decision: %+v, want the name denied", v)
			}
		}
		cancel()
		s.settleName(ctx, true)

		s.nameCheck.mu.Lock()
		npol, nwhy, undo := s.nameCheck.pol, s.nameCheck.why, s.nameCheck.undo
		s.nameCheck.mu.Unlock()
		switch {
		case undo != nil:
			t.Errorf("request took it %v: an undo left after settleName", requestTook)
		case requestTook && (npol != after || nwhy == ""):
			t.Errorf("a deny a request took (refused by it) was put back by the wait's cancel (decided under the new policy %v, why %q)", npol == after, nwhy)
		case !requestTook && (npol != nil || nwhy != ""):
			t.Errorf("the wait's cancelled deny, taken by no one, was kept (%q)", nwhy)
		}
		if want := 1; checks != want {
			t.Errorf("request took it %v: %d checks, want %d (the request takes the decision as it stands)", requestTook, checks, want)
		}
		a.Close()
		b.Close()
	}
}
