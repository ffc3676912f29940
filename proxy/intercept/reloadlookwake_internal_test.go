package intercept

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Tunnels waiting (awaitBounded, as relayDestinationEnd's) when a reload
// denies them all, their checks' answers spread over 200 ms: each wait
// takes its own answer on its own channel, and looks about once after the
// reload. Each deny woke every linger and every such wait in the process
// (hostconn.WakeLingers), each of which looked again (an upstreamReset: a
// getsockopt and a poll), so the looks grew with the square of the waits:
// 1164 for 50 in the review (review r4s28 F4). Only a linger's deny wakes
// the lingers (TestLingerStopReloadCheckOffTheLinger).
func TestReloadLookWaitDenyWakesNoOtherWait(t *testing.T) {
	before, after := checkOnPolicies(t, "www.example.test")
	const m = 50
	var idx atomic.Int64
	ic, holder := checkingInterceptor(before, func(ctx context.Context, _, name string, _ netip.Addr) error {
		i := idx.Add(1)
		select {
		case <-time.After(time.Duration(i) * 200 * time.Millisecond / m):
		case <-ctx.Done():
			return ctx.Err()
		}
		return errors.New(name + " resolves to 203.0.113.9")
	})
	var looks atomic.Int64
	var wg sync.WaitGroup
	var ends [m]boundedEnd
	start := make(chan struct{})
	dest := netip.MustParseAddrPort("192.0.2.10:443")
	for i := range m {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		s := pipeSession(ic, a, "tcp", dest)
		reload := new(tunnelReload).init(s, before, policy.Subject{Domain: "www.example.test", Dest: dest}, &records.Record{}, destVouch{}, false)
		u := &upgradedBody{reload: reload, aborted: s.abortedSignal()}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			rl := newReloadLook(reload)
			ends[i] = u.awaitBounded(time.Now(), nil, nil, nil, func() bool { looks.Add(1); return false }, rl)
			rl.stop()
		}()
	}
	close(start)
	time.Sleep(100 * time.Millisecond)
	base := looks.Load()
	holder.Store(after)
	wg.Wait()
	for i, end := range ends {
		// The deny aborts the session: its answer or the abort, whichever
		// the wait's select takes first.
		if end != endedByLook && end != endedEarly {
			t.Errorf("wait %d ended %d, want by its deny", i, end)
		}
	}
	if n := ic.denied.Load(); n != m {
		t.Errorf("%d denied, want %d", n, m)
	}
	if n := looks.Load() - base; n > 2*m {
		t.Errorf("%d waits looked %d times after the reload, want about one each", m, n)
	} else {
		t.Logf("%d waits looked %d times after the reload", m, n)
	}
}
