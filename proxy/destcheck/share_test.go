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
// other client brought in stays in its share even once the flooding client
// asks for it too, so that it cannot be evicted that way either. The
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
		t.Errorf("the flooding client holds %d names, want its share, %d", n, share)
	}
	if n := held(victim); n != 2*maxChain {
		t.Errorf("the other client holds %d names, want the %d its two answers brought in", n, 2*maxChain)
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
