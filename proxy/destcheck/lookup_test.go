package destcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck/destchecktest"
)

func TestLookup(t *testing.T) {
	srv := startServer(t)
	srv.Set("bank.test", 60, addr("192.0.2.1"), addr("2001:db8::1"))
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	for _, dest := range []string{"192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"} {
		if err := check(c, epA, "Bank.Test.", dest); err != nil {
			t.Errorf("%s: %v", dest, err)
		}
	}
	if n := srv.Queries("bank.test"); n != 2 {
		t.Errorf("%d queries for bank.test, want 2 (A and AAAA, once)", n)
	}
	err := check(c, epB, "bank.test", "198.51.100.9")
	var me *MismatchError
	if !errors.As(err, &me) || err.Error() != "198.51.100.9 is not an address of bank.test (resolves to 192.0.2.1, 2001:db8::1)" {
		t.Errorf("a spoofed destination: %v", err)
	}
	if n := srv.Queries("bank.test"); n != 2 {
		t.Errorf("%d queries for bank.test, want still 2: the answer is current", n)
	}
	// An observed answer and the lookup together name every address.
	c.Observe(epB, msg(t, "bank.test.", rr{name: "bank.test.", ttl: 60, addr: "192.0.2.7"}))
	if err := check(c, epB, "bank.test", "198.51.100.9"); err == nil || !strings.Contains(err.Error(), "(resolves to 192.0.2.1, 192.0.2.7, 2001:db8::1)") {
		t.Errorf("mismatch naming observed and looked-up addresses: %v", err)
	}
	if st := c.Stats(); st.Lookups != 1 || st.ResolvedHits != 3 || st.Mismatches != 2 {
		t.Errorf("stats %+v: want 1 lookup, 3 hits, 2 mismatches", st)
	}
}

func TestLookupFollowsCNAME(t *testing.T) {
	srv := startServer(t)
	srv.SetCNAME("www.shop.test", "shop.cdn.test", 300)
	srv.Set("shop.cdn.test", 60, addr("192.0.2.10"), addr("2001:db8::10"))
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	for _, dest := range []string{"192.0.2.10", "2001:db8::10"} {
		if err := check(c, epA, "www.shop.test", dest); err != nil {
			t.Errorf("%s: %v", dest, err)
		}
	}
}

func TestLookupTTL(t *testing.T) {
	srv := startServer(t)
	srv.Set("ttl.test", 60, addr("192.0.2.1"))
	clk := newFakeClock()
	// No recheck within the TTL: the answer stands until it expires.
	c := newTestChecker(t, Config{Resolver: srv.Addr(), Grace: 30 * time.Second, Recheck: time.Hour}, clk)
	if err := check(c, epA, "ttl.test", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	srv.Set("ttl.test", 60, addr("192.0.2.2"))
	clk.Advance(59 * time.Second)
	if err := check(c, epA, "ttl.test", "192.0.2.2"); err == nil {
		t.Error("a new address was accepted while the old answer was current")
	}
	clk.Advance(20 * time.Second) // past the TTL, within the grace
	if err := check(c, epA, "ttl.test", "192.0.2.1"); err != nil {
		t.Errorf("the old address within its grace: %v", err)
	}
	if err := check(c, epA, "ttl.test", "192.0.2.2"); err != nil {
		t.Errorf("the new address once the old answer expired: %v", err)
	}
	if n := srv.Queries("ttl.test"); n != 4 {
		t.Errorf("%d queries, want 4: two lookups", n)
	}
}

// A mismatch with a current answer looks the name up again, at most once
// per Recheck, and the addresses found accumulate (round-robin names).
func TestLookupRecheck(t *testing.T) {
	srv := startServer(t)
	srv.Set("rr.test", 300, addr("192.0.2.1"))
	clk := newFakeClock()
	c := newTestChecker(t, Config{Resolver: srv.Addr(), Recheck: 5 * time.Second}, clk)
	if err := check(c, epA, "rr.test", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	srv.Set("rr.test", 300, addr("192.0.2.2"))
	clk.Advance(time.Second)
	if err := check(c, epA, "rr.test", "192.0.2.2"); err == nil {
		t.Error("rechecked within a second of the lookup")
	}
	clk.Advance(5 * time.Second)
	for _, dest := range []string{"192.0.2.2", "192.0.2.1"} {
		if err := check(c, epA, "rr.test", dest); err != nil {
			t.Errorf("after a recheck, %s: %v", dest, err)
		}
	}
	if n := srv.Queries("rr.test"); n != 4 {
		t.Errorf("%d queries, want 4: the lookup and one recheck", n)
	}
}

func TestLookupNegativeCaching(t *testing.T) {
	srv := startServer(t)
	srv.Set("v6only.test", 60, addr("2001:db8::1"))
	srv.SetRecord("nodata.test", destchecktest.Record{}) // exists, without addresses
	clk := newFakeClock()
	c := newTestChecker(t, Config{Resolver: srv.Addr(), NegativeTTL: 5 * time.Second}, clk)
	for _, tc := range []struct{ name, want string }{
		{"gone.test", "192.0.2.1 is not an address of gone.test (resolves to no address: NXDOMAIN)"},
		{"nodata.test", "192.0.2.1 is not an address of nodata.test (resolves to no address: NODATA)"},
		{"v6only.test", "192.0.2.1 is not an address of v6only.test (resolves to 2001:db8::1)"},
	} {
		for range 3 {
			err := check(c, epA, tc.name, "192.0.2.1")
			if me := (*MismatchError)(nil); !errors.As(err, &me) || err.Error() != tc.want {
				t.Errorf("%s: got %v, want %s", tc.name, err, tc.want)
			}
		}
		if n := srv.Queries(tc.name); n != 2 {
			t.Errorf("%s: %d queries, want 2: the negative answer is cached", tc.name, n)
		}
	}
	srv.Set("gone.test", 60, addr("192.0.2.1"))
	clk.Advance(6 * time.Second)
	if err := check(c, epA, "gone.test", "192.0.2.1"); err != nil {
		t.Errorf("once the negative answer expired: %v", err)
	}
}

func TestLookupFailures(t *testing.T) {
	srv := startServer(t)
	srv.SetRecord("broken.test", destchecktest.Record{RCode: dnsmessage.RCodeServerFailure})
	clk := newFakeClock()
	c := newTestChecker(t, Config{Resolver: srv.Addr(), FailureTTL: time.Second}, clk)
	err := check(c, epA, "broken.test", "192.0.2.1")
	wantLookupError(t, err, "broken.test")
	if err == nil || !strings.Contains(err.Error(), "resolver "+srv.Addr().String()+" answered SERVFAIL") {
		t.Errorf("SERVFAIL: %v", err)
	}
	wantLookupError(t, check(c, epA, "broken.test", "192.0.2.1"), "broken.test")
	if n := srv.Queries("broken.test"); n != 2 {
		t.Errorf("%d queries, want 2: the failure is repeated for FailureTTL", n)
	}
	clk.Advance(2 * time.Second)
	wantLookupError(t, check(c, epA, "broken.test", "192.0.2.1"), "broken.test")
	if n := srv.Queries("broken.test"); n != 4 {
		t.Errorf("%d queries, want 4: asked again after FailureTTL", n)
	}

	// A resolver that does not answer.
	srv.SetSilent(true)
	c2 := newTestChecker(t, Config{Resolver: srv.Addr(), LookupTimeout: 300 * time.Millisecond}, nil)
	start := time.Now()
	err = check(c2, epA, "silent.test", "192.0.2.1")
	wantLookupError(t, err, "silent.test")
	if err == nil || !strings.Contains(err.Error(), "did not answer within 300ms") || time.Since(start) > 2*time.Second {
		t.Errorf("silent resolver: %v after %s", err, time.Since(start))
	}

	// Nobody listening: the port unreachable comes back at once.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	c3 := newTestChecker(t, Config{Resolver: closed}, nil)
	err = check(c3, epA, "x.test", "192.0.2.1")
	wantLookupError(t, err, "x.test")
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("closed port: %v", err)
	}

	// No resolver at all.
	c4 := newTestChecker(t, Config{}, nil)
	if err := check(c4, epA, "x.test", "192.0.2.1"); err == nil || err.Error() != "no address of x.test could be looked up: no resolver is configured" {
		t.Errorf("no resolver: %v", err)
	}
	// A name that cannot be asked.
	long := strings.Repeat("a", 64) + ".test"
	if err := check(c4, epA, long, "192.0.2.1"); err == nil {
		t.Error("a label of 64 octets was looked up")
	}
}

// Truncated over UDP: asked again over TCP.
func TestLookupTruncatedUsesTCP(t *testing.T) {
	srv := startServer(t)
	srv.Set("big.test", 60, addr("192.0.2.1"))
	srv.SetTruncate(true)
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	if err := check(c, epA, "big.test", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if n := srv.TCPQueries(); n != 2 {
		t.Errorf("%d queries over TCP, want 2", n)
	}
}

// A query lost on the way is sent again.
func TestLookupRetransmits(t *testing.T) {
	srv := startServer(t)
	srv.Set("lossy.test", 60, addr("192.0.2.1"))
	srv.DropNext(2)
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	start := time.Now()
	if err := check(c, epA, "lossy.test", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("answered after %s: want one retransmission a second later", d)
	}
	if n := srv.Queries("lossy.test"); n != 4 {
		t.Errorf("%d queries, want 4: A and AAAA, twice", n)
	}
}

// N concurrent checks of one name: one lookup.
func TestLookupSingleflight(t *testing.T) {
	srv := startServer(t)
	srv.Set("busy.test", 60, addr("192.0.2.1"))
	srv.SetDelay(200 * time.Millisecond)
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	const n = 50
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			dest := "192.0.2.1"
			if i%5 == 0 {
				dest = "192.0.2.66"
			}
			err := check(c, epA, "busy.test", dest)
			if dest == "192.0.2.1" {
				errs <- err
			} else if _, ok := err.(*MismatchError); !ok {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if q := srv.Queries("busy.test"); q != 2 {
		t.Errorf("%d queries for %d concurrent checks, want 2 (one lookup)", q, n)
	}
}

// A check gives up waiting when its context ends; the lookup carries on,
// and its answer serves the next check.
func TestCheckTimeout(t *testing.T) {
	srv := startServer(t)
	srv.Set("slow.test", 60, addr("192.0.2.1"))
	srv.SetDelay(600 * time.Millisecond) // below the 1 s retransmission
	c := newTestChecker(t, Config{Resolver: srv.Addr()}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Check(ctx, epA, "slow.test", addr("192.0.2.1"))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 600*time.Millisecond {
		t.Errorf("got %v after %s, want the context's deadline after 100ms", err, time.Since(start))
	}
	wantLookupError(t, err, "slow.test")
	// Another name's check does not wait for slow.test's lookup.
	srv.SetDelay(0)
	srv.Set("quick.test", 60, addr("192.0.2.2"))
	start = time.Now()
	if err := check(c, epA, "quick.test", "192.0.2.2"); err != nil || time.Since(start) > 500*time.Millisecond {
		t.Errorf("another name while a lookup is slow: %v after %s", err, time.Since(start))
	}
	if err := check(c, epA, "slow.test", "192.0.2.1"); err != nil {
		t.Errorf("after waiting: %v", err)
	}
	if q := srv.Queries("slow.test"); q != 2 {
		t.Errorf("%d queries for slow.test, want 2: the abandoned lookup served the next check", q)
	}
}

// Lookups in flight are bounded: beyond MaxLookups they wait for a slot.
// (Six endpoints, each within its share.)
func TestLookupConcurrencyBound(t *testing.T) {
	srv := startServer(t)
	srv.Set("*.many.test", 60, addr("192.0.2.1"))
	srv.SetDelay(100 * time.Millisecond)
	c := newTestChecker(t, Config{Resolver: srv.Addr(), MaxLookups: 2}, nil)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range 6 {
		wg.Go(func() {
			if err := check(c, fmt.Sprintf("vpce-%017x", i), string(rune('a'+i))+".many.test", "192.0.2.1"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// 6 lookups, 2 at a time, 100 ms each: at least 300 ms.
	if d := time.Since(start); d < 280*time.Millisecond {
		t.Errorf("6 lookups with MaxLookups 2 took %s: not bounded", d)
	}
}

func TestCloseEndsLookups(t *testing.T) {
	srv := startServer(t)
	srv.SetSilent(true)
	c := newChecker(Config{Resolver: srv.Addr(), LookupTimeout: 10 * time.Second}, time.Now)
	done := make(chan error, 1)
	go func() { done <- check(c, epA, "x.test", "192.0.2.1") }()
	for srv.Queries("") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	c.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("check during Close: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %s", d)
	}
	if err := check(c, epA, "y.test", "192.0.2.1"); !errors.Is(err, ErrClosed) {
		t.Errorf("check after Close: %v", err)
	}
}

// A forged or stray datagram on the lookup's socket is not the answer.
func TestLookupIgnoresMismatchedAnswers(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go serveQuestions(pc, func(h dnsmessage.Header, q dnsmessage.Question, reply func([]byte)) {
		answer := func(id uint16, name string, a [4]byte) []byte {
			m := dnsmessage.Message{Header: dnsmessage.Header{ID: id, Response: true},
				Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: q.Type, Class: dnsmessage.ClassINET}}}
			if q.Type == dnsmessage.TypeA {
				m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60}, Body: &dnsmessage.AResource{A: a}}}
			}
			b, _ := m.Pack()
			return b
		}
		reply(answer(h.ID+1, q.Name.String(), [4]byte{6, 6, 6, 6})) // wrong ID
		reply(answer(h.ID, "other.test.", [4]byte{6, 6, 6, 7}))     // wrong question
		reply([]byte{1, 2, 3})                                      // junk
		reply(answer(h.ID, q.Name.String(), [4]byte{192, 0, 2, 1})) // the answer
	})
	c := newTestChecker(t, Config{Resolver: pc.LocalAddr().(*net.UDPAddr).AddrPort()}, nil)
	if err := check(c, epA, "real.test", "192.0.2.1"); err != nil {
		t.Errorf("the real answer: %v", err)
	}
	for _, forged := range []string{"6.6.6.6", "6.6.6.7"} {
		if err := check(c, epA, "real.test", forged); err == nil {
			t.Errorf("%s, from a forged answer, was accepted", forged)
		}
	}
}

func TestParseResolver(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.53":            "192.0.2.53:53",
		"192.0.2.53:5353":       "192.0.2.53:5353",
		"2001:db8::53":          "[2001:db8::53]:53",
		"[2001:db8::53]:53":     "[2001:db8::53]:53",
		"[::ffff:192.0.2.1]:53": "192.0.2.1:53",
	} {
		got, err := ParseResolver(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseResolver(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "dns.example", "192.0.2.53:0", "192.0.2.53:99999", "192.0.2.0/24"} {
		if _, err := ParseResolver(in); err == nil {
			t.Errorf("ParseResolver(%q) accepted", in)
		}
	}
}

func TestSystemResolver(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := SystemResolver(write("# comment\nsearch ec2.internal\nnameserver bogus\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n"))
	if err != nil || got != netip.MustParseAddrPort("10.0.0.2:53") {
		t.Errorf("got %v, %v; want the first valid nameserver", got, err)
	}
	if _, err := SystemResolver(write("search x\n")); err == nil || !strings.Contains(err.Error(), "lists no nameserver") {
		t.Errorf("no nameserver: %v", err)
	}
	if _, err := SystemResolver(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was accepted")
	}
}

// TestLookupsSharedByEndpoints: an endpoint that started its share of the
// lookups in flight starts a new name only while more than three shares of
// slots are free; otherwise the new name's lookup waits (not counted in
// the endpoint's share, holding no slot) until so many are free, while a
// name already being looked up may still be waited for, and other
// endpoints' checks still get their lookups: within their share they take
// the slots left, or wait for one, ahead of the lookup beyond its share.
// Before 6a0904e, one or two endpoints' clients sending fresh names under
// an allowed wildcard held every slot, and every other endpoint's checks
// waited until they failed; until the queue beyond the share, the new name
// was refused at once.
func TestLookupsSharedByEndpoints(t *testing.T) {
	srv := startServer(t)
	srv.Set("*.slow.test", 60, addr("192.0.2.1"))
	srv.SetDelay(300 * time.Millisecond)
	c := newTestChecker(t, Config{Resolver: srv.Addr(), MaxLookups: 8}, nil) // a share of 1, 3 slots kept
	var wg sync.WaitGroup
	for i := range 5 { // beyond its share while more than 3 slots are free
		name := string(rune('a'+i)) + ".slow.test"
		wg.Go(func() {
			if err := check(c, epA, name, "192.0.2.1"); err != nil {
				t.Errorf("%s from %s: %v", name, epA, err)
			}
		})
		for srv.Queries("") < 2*(i+1) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	start := time.Now()
	var waited time.Duration
	wg.Go(func() {
		if err := check(c, epA, "z.slow.test", "192.0.2.1"); err != nil {
			t.Errorf("a new name from an endpoint beyond its share: %v", err)
		}
		waited = time.Since(start)
	})
	waitFor(t, "the new name beyond the share queued", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.overShare.len() == 1 && c.slots.running == 5 && c.callsBy[epA] == 5
	})
	wg.Go(func() { // a name in flight: joined, not queued
		if err := check(c, epA, "a.slow.test", "192.0.2.1"); err != nil {
			t.Errorf("joining a lookup in flight: %v", err)
		}
	})
	// Four other endpoints: three take the slots left, one waits for a slot.
	for i := range 4 {
		wg.Go(func() {
			if err := check(c, fmt.Sprintf("vpce-%017x", 12+i), string(rune('v'+i))+".slow.test", "192.0.2.1"); err != nil {
				t.Errorf("another endpoint's check: %v", err)
			}
		})
	}
	waitFor(t, "the other endpoints' lookups", func() bool {
		c.callMu.Lock()
		defer c.callMu.Unlock()
		return c.slots.running == 8 && c.slots.waiting.len() == 1 && c.slots.overShare.len() == 1
	})
	wg.Wait()
	if waited < 500*time.Millisecond {
		t.Errorf("the new name beyond the share was answered after %v, want after it waited for the first lookups to end (about 600 ms)", waited)
	}
	wantSlotInvariants(t, c)
}

// serveQuestions reads DNS questions on pc until it closes and hands each,
// with a way to reply to its sender, to answer.
func serveQuestions(pc net.PacketConn, answer func(h dnsmessage.Header, q dnsmessage.Question, reply func([]byte))) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, _ := p.Question()
		answer(h, q, func(b []byte) { pc.WriteTo(b, from) })
	}
}
