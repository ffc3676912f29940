package destcheck

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// chainResp builds a response to name: a CNAME chain of 7 aliases under
// zone, the last with naddrs A records from first on: 8 names, each bound
// to every address, the most one answer brings in.
func chainResp(tb testing.TB, name, zone string, naddrs int, first netip.Addr) []byte {
	tb.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: true, RecursionAvailable: true})
	b.EnableCompression()
	qn := dnsmessage.MustNewName(name + ".")
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: qn, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	_ = b.StartAnswers()
	prev := qn
	for i := range maxChain - 1 {
		next := dnsmessage.MustNewName(fmt.Sprintf("a%d.%s.%s.", i, name[:8], zone))
		_ = b.CNAMEResource(dnsmessage.ResourceHeader{Name: prev, Class: dnsmessage.ClassINET, TTL: 3600}, dnsmessage.CNAMEResource{CNAME: next})
		prev = next
	}
	a := first.As4()
	for i := range naddrs {
		a[3] = byte(i)
		_ = b.AResource(dnsmessage.ResourceHeader{Name: prev, Class: dnsmessage.ClassINET, TTL: 3600}, dnsmessage.AResource{A: a})
	}
	msg, err := b.Finish()
	if err != nil {
		tb.Fatal(err)
	}
	return msg
}

// TestObservedClientShare plays a client that asks a trusted resolver for
// ever new names of a zone of its own, each answer a CNAME chain of 8
// names with 64 addresses: 6,250 answers filled its endpoint's 50,000
// names and evicted every answer the endpoint's other clients had been
// given, whose connections made from their cached answers were then
// checked against the appliance's own lookup (denied, for split-horizon
// names). Its names now come out of its own share: the other client's
// answer stays, and the client holds no more than its share. A name the
// other client was told stays while that client claims it, even once the
// flooding client asks for it too (and for one it asked for first, see
// TestObservedClaimAskedFirst). The
// memory the flood holds is logged: the worst case docs/policy.md gives.
func TestObservedClientShare(t *testing.T) {
	c := newTestChecker(t, Config{}, nil) // defaults: 100,000, 50,000 an endpoint, 12,500 a client
	const ep = "vpce-1"
	victim, attacker := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")
	told := netip.MustParseAddr("10.20.30.40")
	c.ObserveAt(c.Generation(), ep, victim, chainResp(t, "internal.corp.example", "corp.example", 1, told))
	c.ObserveAt(c.Generation(), ep, victim, chainResp(t, "shared00.corp.example", "corp.example", 1, told))
	chk := func(name string) error {
		return c.Check(context.Background(), ep, name, netip.MustParseAddr("10.20.30.0"))
	}
	if err := chk("internal.corp.example"); err != nil {
		t.Fatalf("before: %v", err)
	}
	// The attacker learns one of the victim's names and asks for it too.
	c.ObserveAt(c.Generation(), ep, attacker, chainResp(t, "shared00.corp.example", "corp.example", 1, told))

	const answers = 50_000 / maxChain
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range answers {
		c.ObserveAt(c.Generation(), ep, attacker,
			chainResp(t, fmt.Sprintf("x%07d.attacker.example", i), "attacker.example", maxAddrsPerName, netip.MustParseAddr("192.0.2.0")))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := c.Stats()
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d answers of %d names with %d addresses: %d names kept, %d evicted; heap grew %.1f MiB, %d bytes a name",
		answers, maxChain, maxAddrsPerName, st.ObservedNames, st.Evicted, float64(grew)/(1<<20), grew/int64(max(st.ObservedNames, 1)))

	for _, name := range []string{"internal.corp.example", "shared00.corp.example"} {
		if err := chk(name); err != nil {
			t.Errorf("another client's flood evicted the answer %s was given: %v", name, err)
		}
	}
	share := c.cfg.MaxEntriesPerClient
	if want := 50_000 / 4; share != want {
		t.Errorf("default share of a client %d names, want %d", share, want)
	}
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	held := func(client netip.Addr) int {
		if l := c.observed.clients[clientKey{ep, client}]; l != nil {
			return l.n
		}
		return 0
	}
	if n := held(attacker); n != share {
		t.Errorf("the flooding client holds %d claims, want its share, %d", n, share)
	}
	if n := held(victim); n != 2*maxChain {
		t.Errorf("the other client holds %d claims, want the %d of its two answers", n, 2*maxChain)
	}
	checkLists(t, c.observed)
}

// TestObservedClientShareNoClient: answers that name no client (Observe)
// count against the endpoint's bound only.
func TestObservedClientShareNoClient(t *testing.T) {
	c := newTestChecker(t, Config{MaxEntries: 100, MaxEntriesPerEndpoint: 40, MaxEntriesPerClient: 2}, nil)
	for i := range 10 {
		name := fmt.Sprintf("n%d.test.", i)
		c.Observe(epA, msg(t, name, rr{name: name, ttl: 60, addr: "192.0.2.1"}))
	}
	if st := c.Stats(); st.ObservedNames != 10 || st.Evicted != 0 {
		t.Errorf("stats %+v: want 10 names, none evicted", st)
	}
	// A client's own share is its own: its third name evicts its first.
	cl := netip.MustParseAddr("10.0.0.9")
	for i := range 3 {
		name := fmt.Sprintf("c%d.test.", i)
		c.ObserveAt(c.Generation(), epA, cl, msg(t, name, rr{name: name, ttl: 60, addr: "192.0.2.1"}))
	}
	if check(c, epA, "c0.test", "192.0.2.1") == nil || check(c, epA, "c2.test", "192.0.2.1") != nil || check(c, epA, "n0.test", "192.0.2.1") != nil {
		t.Errorf("want c0 evicted by the client's own share, c2 and n0 kept")
	}
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	checkLists(t, c.observed)
}

// TestObservedClaimAskedFirst: a client that asks for a name before
// another client does cannot evict it from the other's answer. Before,
// the entry belonged to the client whose answer brought it in and stayed
// in its share when the other client was told it too: the first client
// then asked for 12,500 names of its own zone, its own share only, and the
// other client's name went with its oldest (its connections made from the
// cached answer then fell back to the appliance's lookup, denied for
// split-horizon names). Now every client told a name claims it, a client
// at its share takes back only its own claims, and the name stays while
// the other client claims it.
func TestObservedClaimAskedFirst(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	const ep = "vpce-1"
	victim, attacker := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")
	told := netip.MustParseAddr("10.20.30.40")
	c.ObserveAt(c.Generation(), ep, attacker, chainResp(t, "internal.corp.example", "corp.example", 1, told))
	c.ObserveAt(c.Generation(), ep, victim, chainResp(t, "internal.corp.example", "corp.example", 1, told))
	chk := func() error {
		return c.Check(context.Background(), ep, "internal.corp.example", netip.MustParseAddr("10.20.30.0"))
	}
	if err := chk(); err != nil {
		t.Fatalf("before: %v", err)
	}
	for i := range c.cfg.MaxEntriesPerClient / maxChain {
		c.ObserveAt(c.Generation(), ep, attacker,
			chainResp(t, fmt.Sprintf("x%07d.attacker.example", i), "attacker.example", 1, netip.MustParseAddr("192.0.2.0")))
	}
	if err := chk(); err != nil {
		t.Errorf("the victim's answer, asked for first by the attacker, is gone after the attacker's own-share flood of %d names: %v", c.cfg.MaxEntriesPerClient, err)
	}
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	e := c.observed.get(key{ep, "internal.corp.example"})
	if e == nil || len(e.claims) != 1 || e.claims[0].cl.key.client != victim {
		t.Errorf("want the name claimed by the victim alone, the attacker's claim taken back by its share")
	}
	checkLists(t, c.observed)
}

// TestObservedEndpointBoundLargestFirst: four addresses of one attacker,
// each within its share (a quarter of the endpoint's), fill the endpoint.
// Before, the endpoint's oldest name went at its bound, whoever had been
// told it: the victim's answer, given first, went first. Now the bound
// takes back claims from the client holding the most, so the victim's 8
// names stay and the attackers' last answers trim each other.
func TestObservedEndpointBoundLargestFirst(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	const ep = "vpce-1"
	victim := netip.MustParseAddr("10.0.0.5")
	told := netip.MustParseAddr("10.20.30.40")
	c.ObserveAt(c.Generation(), ep, victim, chainResp(t, "internal.corp.example", "corp.example", 1, told))
	for a := range 4 {
		att := netip.AddrFrom4([4]byte{10, 0, 1, byte(a)})
		for i := range c.cfg.MaxEntriesPerClient/maxChain + 1 {
			c.ObserveAt(c.Generation(), ep, att,
				chainResp(t, fmt.Sprintf("x%d%06d.attacker.example", a, i), "attacker.example", 1, netip.MustParseAddr("192.0.2.0")))
		}
	}
	if err := c.Check(context.Background(), ep, "internal.corp.example", netip.MustParseAddr("10.20.30.0")); err != nil {
		t.Errorf("four attacker addresses (a quarter share each) evicted the victim's answer: %v", err)
	}
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	if n := c.observed.endpoints[ep].n; n != c.cfg.MaxEntriesPerEndpoint {
		t.Errorf("the endpoint holds %d names, want its bound, %d", n, c.cfg.MaxEntriesPerEndpoint)
	}
	if l := c.observed.clients[clientKey{ep, victim}]; l == nil || l.n != maxChain {
		t.Errorf("the victim's claims were taken back (%v), want its %d", l != nil, maxChain)
	}
	checkLists(t, c.observed)
}

// TestObservedClaimsBound: names several clients are told (popular names
// behind many clients) hold a claim of each, bounded per endpoint to
// claimsPerName times its names, so that the claims and the clients
// holding them take memory in proportion to the names. At the bound the
// client holding the most claims gives back its oldest: 20 clients told
// the same 10 names keep their latest, and a client told one name of its
// own keeps it.
func TestObservedClaimsBound(t *testing.T) {
	c := newTestChecker(t, Config{MaxEntries: 100, MaxEntriesPerEndpoint: 40, MaxEntriesPerClient: 10}, nil)
	victim := netip.MustParseAddr("10.0.0.5")
	c.ObserveAt(c.Generation(), epA, victim, msg(t, "v.test.", rr{name: "v.test.", ttl: 60, addr: "192.0.2.1"}))
	popular := func(i int) string { return fmt.Sprintf("p%d.test.", i) }
	for cl := range 20 {
		client := netip.AddrFrom4([4]byte{10, 0, 1, byte(cl)})
		for i := range 10 {
			c.ObserveAt(c.Generation(), epA, client, msg(t, popular(i), rr{name: popular(i), ttl: 60, addr: "192.0.2.1"}))
		}
	}
	for _, name := range []string{"v.test", "p9.test"} {
		if err := check(c, epA, name, "192.0.2.1"); err != nil {
			t.Errorf("%s went: %v", name, err)
		}
	}
	c.observed.mu.RLock()
	defer c.observed.mu.RUnlock()
	if st := c.observed.endpoints[epA]; st.claims > claimsPerName*40 || st.claims < 20*10/4 {
		t.Errorf("endpoint holds %d claims, want at most %d (and the bound reached)", st.claims, claimsPerName*40)
	}
	checkLists(t, c.observed)
}
