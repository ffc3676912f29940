package intercept

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A linger's look wakes the lingers on its deny only once its answer is
// there: a linger the wake made look (lingerStop) finds the deny. Woken
// before it, the look found no answer and the linger slept to its next
// look, up to a second on (review r8s28 N1: 18 of 3000 under -race, with
// the look made right after the wake). Here the look is made in the wake
// itself, so it always came first before.
func TestLingerLookWakesAfterItsAnswer(t *testing.T) {
	before, after := checkOnPolicies(t, "www.example.test")
	ic, holder := checkingInterceptor(before, func(ctx context.Context, _, name string, _ netip.Addr) error {
		return errors.New(name + " resolves to 203.0.113.9")
	})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	s := pipeSession(ic, a, "tcp", netip.MustParseAddrPort("192.0.2.10:443"))
	reload := new(tunnelReload).init(s, before, policy.Subject{Domain: "www.example.test", Dest: s.Subject.Dest}, &records.Record{}, destVouch{}, false)
	u := &upgradedBody{reload: reload}
	rl := newLingerLook(reload)
	defer rl.stop()
	woken := make(chan error, 1)
	wake := rl.wake
	rl.wake = func() {
		// The woken linger's look, the linger blocked meanwhile.
		woken <- u.lingerStop(rl)
		wake()
	}
	lingers := hostconn.LingersWoken()
	holder.Store(after)
	if err := u.lingerStop(rl); err != nil { // starts the check
		t.Fatalf("the first look: %v, want no answer yet", err)
	}
	select {
	case err := <-woken:
		if !errors.Is(err, errTunnelReloadDenied) {
			t.Errorf("the look the deny's wake made: %v, want the deny", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the deny woke no linger")
	}
	select {
	case <-lingers:
	case <-time.After(5 * time.Second):
		t.Fatal("the lingers were not woken")
	}
}
