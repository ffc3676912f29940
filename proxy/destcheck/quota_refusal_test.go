package destcheck

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// A check refused a lookup because its endpoint holds its share of the
// lookups in flight is a LookupError, even when an answer relayed to the
// endpoint's clients names other addresses of the name: the lookup that
// could have vouched for the destination never ran, so "DEST is not an
// address of NAME" would be a verdict nobody reached. (Kills the mutant
// that drops failed()'s errEndpointLookups case.)
func TestQuotaRefusalNotAMismatch(t *testing.T) {
	srv := startServer(t)
	srv.Set("*.slow.test", 60, addr("192.0.2.1"))
	srv.SetDelay(300 * time.Millisecond)
	c := newTestChecker(t, Config{Resolver: srv.Addr(), MaxLookups: 8}, nil)
	c.Observe(epA, msg(t, "z.slow.test.", rr{name: "z.slow.test.", ttl: 60, addr: "192.0.2.9"}))
	var wg sync.WaitGroup
	for i := range 5 { // epA's share and more, until three slots are left
		name := string(rune('a'+i)) + ".slow.test"
		wg.Go(func() { _ = check(c, epA, name, "192.0.2.1") })
	}
	for srv.Queries("") < 10 {
		time.Sleep(5 * time.Millisecond)
	}
	err := check(c, epA, "z.slow.test", "192.0.2.1")
	var le *LookupError
	var me *MismatchError
	if !errors.As(err, &le) || errors.As(err, &me) {
		t.Errorf("a refused lookup with other addresses known: %v (%T), want a LookupError", err, err)
	}
	wg.Wait()
}
