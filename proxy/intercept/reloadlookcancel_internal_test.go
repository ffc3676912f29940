package intercept

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A bumped tunnel's wait ends (stop) just as the reload's recheck of the
// connection's name (decideNameCtx) has its deny: the cancel lands after
// the name's decision was kept, before recheck sees it. The tunnel's part
// was put back and the tunnel went on, but the name stayed denied, so its
// tls record said "ended by a policy reload" while nothing was ended and
// the tunnel's http record said ok (review r4s28 F3). A cancelled check
// decides nothing: either both the tunnel and the name are denied, or
// neither is. The window is a few instructions wide: the stop is timed
// off the check's answer, at random, many times over.
func TestReloadLookCancelPutsTheNameBack(t *testing.T) {
	before, after := checkOnPolicies(t, "www.example.test, api.example.test")
	dest := netip.MustParseAddrPort("192.0.2.10:443")
	var denied, undecided, broken, runs int
	const n = 10000
	for i := range n {
		runs++
		answering := make(chan struct{})
		ic, holder := checkingInterceptor(before, func(ctx context.Context, _, name string, _ netip.Addr) error {
			if name == "api.example.test" {
				return nil // the tunnel's own name
			}
			close(answering) // the connection's name: it fails
			return errors.New(name + " resolves to 203.0.113.9")
		})
		a, b := net.Pipe()
		s := pipeSession(ic, a, "tls", dest)
		namedTo(s, "www.example.test", before)
		var r tunnelReload
		reload := r.init(s, before, policy.Subject{Domain: "api.example.test", Dest: dest}, &records.Record{}, destVouch{}, false)
		rl := newReloadLook(reload)
		holder.Store(after)
		rl.poll() // starts the check
		<-answering
		// The name's decision is made, and kept or not, under its lock,
		// held meanwhile: taking it, awake, lands just after, and a spin
		// of none to a µs or so sweeps the window.
		for !s.nameCheck.mu.TryLock() {
		}
		s.nameCheck.mu.Unlock()
		spin(rand.IntN(200))
		rl.stop()
		<-rl.answer()
		reload.mu.Lock()
		why := reload.why
		reload.mu.Unlock()
		s.nameCheck.mu.Lock()
		npol, nwhy := s.nameCheck.pol, s.nameCheck.why
		s.nameCheck.mu.Unlock()
		switch {
		case why != "":
			denied++
			if npol != after || nwhy == "" {
				broken++
				t.Errorf("iteration %d: the tunnel denied, the name not (%v, %q)", i, npol == after, nwhy)
			}
		default:
			undecided++
			if npol != nil || nwhy != "" {
				broken++
				t.Errorf("iteration %d: the tunnel not denied (its check cancelled), the name kept decided under the new policy (%q)", i, nwhy)
			}
		}
		a.Close()
		b.Close()
		if broken > 5 {
			break
		}
	}
	t.Logf("%d iterations: %d denied, %d cancelled, %d with the tunnel and the name decided apart", runs, denied, undecided, broken)
}

var spun atomic.Int64

// spin busies the goroutine for n steps.
func spin(n int) {
	for range n {
		spun.Add(1)
	}
}
