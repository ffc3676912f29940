package destcheck

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

func BenchmarkCheckObservedHit(b *testing.B) {
	c := newTestChecker(b, Config{}, nil)
	c.Observe(epA, msg(b, "www.example.com.", rr{name: "www.example.com.", ttl: 3600, addr: "192.0.2.1"}))
	ctx, dest := context.Background(), addr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Check(ctx, epA, "www.example.com", dest); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCheckResolvedHit(b *testing.B) {
	srv := startServer(b)
	srv.Set("www.example.com", 3600, addr("192.0.2.1"))
	c := newTestChecker(b, Config{Resolver: srv.Addr()}, nil)
	ctx, dest := context.Background(), addr("192.0.2.1")
	if err := c.Check(ctx, epA, "www.example.com", dest); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := c.Check(ctx, epA, "www.example.com", dest); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkObserve(b *testing.B) {
	c := newTestChecker(b, Config{}, nil)
	m := msg(b, "www.example.com.",
		rr{name: "www.example.com.", ttl: 300, cname: "cdn.example.net."},
		rr{name: "cdn.example.net.", ttl: 60, addr: "192.0.2.1"},
		rr{name: "cdn.example.net.", ttl: 60, addr: "192.0.2.2"})
	b.ReportAllocs()
	b.SetBytes(int64(len(m)))
	for b.Loop() {
		c.Observe(epA, m)
	}
}

// A cache hit must not allocate: it runs for every connection a domain
// rule lets through.
func TestCheckHitDoesNotAllocate(t *testing.T) {
	srv := startServer(t)
	srv.Set("looked.example.com", 3600, addr("192.0.2.2"))
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	c.Observe(epA, msg(t, "www.example.com.", rr{name: "www.example.com.", ttl: 3600, addr: "192.0.2.1"}))
	ctx := context.Background()
	if err := c.Check(ctx, epA, "looked.example.com", addr("192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, dest string }{{"www.example.com", "192.0.2.1"}, {"looked.example.com", "192.0.2.2"},
		{"www.example.com", "64:ff9b::192.0.2.1"}, {"looked.example.com", "64:ff9b::192.0.2.2"}} {
		dest := addr(tc.dest)
		if n := testing.AllocsPerRun(100, func() {
			if err := c.Check(ctx, epA, tc.name, dest); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%s: %v allocations per hit, want 0", tc.name, n)
		}
	}
}

// Checks, observations and lookups at once (for the race detector).
func TestConcurrentUse(t *testing.T) {
	srv := startServer(t)
	srv.Set("*.race.test", 60, addr("192.0.2.1"))
	c := newTestChecker(t, Config{Resolver: srv.Addr(), MaxEntries: 50}, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			ep := fmt.Sprintf("vpce-%d", g%3)
			for i := range 200 {
				name := fmt.Sprintf("n%d.race.test", i%40)
				if g%2 == 0 {
					c.Observe(ep, msg(t, name+".", rr{name: name + ".", ttl: 60, addr: "192.0.2.1"}))
				}
				if err := check(c, ep, name, "192.0.2.1"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if st := c.Stats(); st.ObservedNames > 50 || st.ResolvedNames > 50 {
		t.Errorf("stats %+v: more names than the bound", st)
	}
}
