package intercept

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
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
	parse := func(doc string) *policy.Policy {
		p, err := policy.Parse("policy.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	const rules = "  default: deny\n  rules:\n    - {name: named, domains: [www.example.test, api.example.test], action: allow}\n"
	before := parse("policy:\n  destination_check: off\n" + rules)
	after := parse("policy:\n" + rules)
	dest := netip.MustParseAddrPort("192.0.2.10:443")
	var denied, undecided, broken, runs int
	const n = 10000
	for i := range n {
		runs++
		holder := &policy.Holder{}
		holder.Store(before)
		answering := make(chan struct{})
		ic := New(Config{Policy: holder, DestinationCheck: func(ctx context.Context, _, name string, _ netip.Addr) error {
			if name == "api.example.test" {
				return nil // the tunnel's own name
			}
			close(answering) // the connection's name: it fails
			return errors.New(name + " resolves to 203.0.113.9")
		}})
		a, b := net.Pipe()
		s := &session{Session: &Session{Client: &abortingClient{Conn: a, onAbort: func() {}}, Record: &records.Record{Kind: "tls"}, Start: time.Now()}, ic: ic}
		s.Subject.Dest, s.Subject.Domain = dest, "www.example.test"
		s.Hello = &sniff.ClientHello{ServerName: "www.example.test"}
		s.Policy = before
		s.Decision = before.Decide(s.Subject)
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
