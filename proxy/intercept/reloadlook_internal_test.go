package intercept

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A lingering tunnel's stop (lingerStop) asks the reload's recheck at each
// look of the linger: a look that made it itself, a destination check of
// up to 5 s, saw nothing else meanwhile (the destination's acknowledgement,
// the stacks' close), as relayDestinationEnd's wait did (review r5s27
// F4). It starts the check once per policy, off the linger's goroutine,
// answers at once while it runs, and gives its deny once it came, the
// lingers woken for it; a pass is made once.
func TestLingerStopReloadCheckOffTheLinger(t *testing.T) {
	for _, deny := range []bool{false, true} {
		t.Run(map[bool]string{false: "pass", true: "deny"}[deny], func(t *testing.T) {
			before, after := checkOnPolicies(t, "www.example.test")
			var checks atomic.Int32
			release := make(chan struct{})
			ic, holder := checkingInterceptor(before, func(ctx context.Context, _, name string, _ netip.Addr) error {
				checks.Add(1)
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
				if deny {
					return errors.New(name + " resolves to 203.0.113.9")
				}
				return nil
			})
			clientEnd, proxySide := net.Pipe()
			defer clientEnd.Close()
			dest := netip.MustParseAddrPort("192.0.2.10:443")
			s := pipeSession(ic, proxySide, "tcp", dest)
			var r tunnelReload
			reload := r.init(s, before, policy.Subject{Domain: "www.example.test", Dest: dest}, &records.Record{}, destVouch{}, false)
			u := &upgradedBody{reload: reload}
			rl := newLingerLook(reload)
			defer rl.stop()
			if err := u.lingerStop(rl); err != nil {
				t.Fatalf("before the reload: %v", err)
			}
			holder.Store(after)
			woken := hostconn.LingersWoken()
			for i := range 3 {
				start := time.Now()
				if err := u.lingerStop(rl); err != nil {
					t.Fatalf("look %d, the check under way: %v", i, err)
				}
				if took := time.Since(start); took > 100*time.Millisecond {
					t.Fatalf("look %d took %v, the check under way", i, took)
				}
			}
			for end := time.Now().Add(5 * time.Second); checks.Load() == 0; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatal("no check began within 5 s of the reload")
				}
			}
			if err := u.lingerStop(rl); err != nil {
				t.Fatalf("the check under way: %v", err)
			}
			if n := checks.Load(); n != 1 {
				t.Fatalf("%d checks under way, want 1", n)
			}
			close(release)
			var err error
			for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if err = u.lingerStop(rl); err != nil || !deny && rl.answer() == nil {
					break
				}
				if time.Now().After(end) {
					t.Fatal("no answer of the check within 5 s")
				}
			}
			if deny {
				if !errors.Is(err, errTunnelReloadDenied) {
					t.Fatalf("after the check denied: %v", err)
				}
				select {
				case <-woken:
				default:
					t.Error("the deny did not wake the lingers")
				}
				return
			}
			if err != nil {
				t.Fatalf("after the check passed: %v", err)
			}
			for range 3 {
				if err := u.lingerStop(rl); err != nil {
					t.Fatalf("after the check passed: %v", err)
				}
			}
			if n := checks.Load(); n != 1 {
				t.Errorf("%d checks, want 1: once per policy", n)
			}
		})
	}
}
