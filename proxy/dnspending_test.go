package proxy

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// longestQName is the labels of the longest name a query can carry (255
// octets on the wire) made of '.' bytes, which the name's text writes
// \046 each: 1,003 bytes of text.
var longestQName = []string{strings.Repeat(".", 63), strings.Repeat(".", 63), strings.Repeat(".", 63), strings.Repeat(".", 61)}

// pendingOf counts the queries the logs hold waiting for answers.
func pendingOf(logs []*dnsLog) int {
	n := 0
	for _, d := range logs {
		d.mu.Lock()
		n += len(d.pending)
		d.mu.Unlock()
	}
	return n
}

// TestDNSPendingClientBudget plays a client that opens DNS flows to a
// server that never answers and leaves 1,024 queries with the longest
// names pending on each: a flow held them all until it ended, and a
// client's 1,024 flows about 1.2 GiB, grown inside admitted flows. The
// client's flows together now hold at most maxPendingDNSPerClient, each
// under its wire-form name; the queries beyond are recorded as untracked
// at once. Another client keeps its own budget, and the budget comes back
// as flows end.
func TestDNSPendingClientBudget(t *testing.T) {
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Minute
	})
	attacker := &records.Record{Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	other := &records.Record{Endpoint: "vpce-7", ClientIP: "10.0.0.6"}
	const flows = 8 // twice what the budget holds of full flows
	fill := func(rec *records.Record, n int) []*dnsLog {
		logs := make([]*dnsLog, n)
		for i := range logs {
			logs[i] = newDNSLog(p, rec, nil)
			for id := range maxPendingDNS {
				logs[i].query(dnsQueryLabels(uint16(id), longestQName, 1, 0))
			}
		}
		return logs
	}
	closeAll := func(logs []*dnsLog) {
		for _, d := range logs {
			d.close(dnsTimedOut)
		}
	}

	// A first round, so that what the records writer allocates for the
	// untracked records is there before the heap is measured.
	closeAll(fill(attacker, flows))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	logs := fill(attacker, flows)
	runtime.GC()
	runtime.ReadMemStats(&after)
	got := pendingOf(logs)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d flows of %d queries with the longest names: %d pending, heap grew %d KiB (about %d bytes a query)",
		flows, maxPendingDNS, got, grew/1024, grew/int64(max(got, 1)))
	if got != maxPendingDNSPerClient {
		t.Fatalf("the client's %d flows hold %d pending queries, want its budget, %d", flows, got, maxPendingDNSPerClient)
	}
	for k := range logs[0].pending {
		if len(k.name) > maxDNSName {
			t.Fatalf("a pending query is kept under a name of %d bytes, want its wire form, at most %d", len(k.name), maxDNSName)
		}
	}

	// Another client of the endpoint has a budget of its own.
	others := fill(other, 1)
	if n := pendingOf(others); n != maxPendingDNS {
		t.Errorf("another client's flow holds %d pending queries, want %d", n, maxPendingDNS)
	}
	closeAll(others)

	// The budget comes back as the client's flows end, and goes with the
	// last of them.
	closeAll(logs[:4])
	again := fill(attacker, 1)
	if n := pendingOf(again); n != maxPendingDNS {
		t.Errorf("after 4 flows ended, a new flow holds %d pending queries, want %d", n, maxPendingDNS)
	}
	closeAll(logs[4:])
	closeAll(again)
	p.udp.dnsPending.mu.Lock()
	left := len(p.udp.dnsPending.m)
	p.udp.dnsPending.mu.Unlock()
	if left != 0 {
		t.Errorf("%d clients' budgets left after every DNS flow ended, want 0", left)
	}
}

// TestDNSPendingAnswerGivesBack: an answered query gives its room back to
// the client's budget, and the answer path allocates nothing for the name
// it matches.
func TestDNSPendingAnswerGivesBack(t *testing.T) {
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	d := newDNSLog(p, rec, nil)
	q := dnsQueryLabels(1, longestQName, 1, 0)
	d.query(q)
	if n := d.budget.n.Load(); n != 1 {
		t.Fatalf("budget counts %d pending, want 1", n)
	}
	d.answer(dnsResponse(q))
	if n := d.budget.n.Load(); n != 0 || len(d.pending) != 0 {
		t.Fatalf("after the answer: budget counts %d, the flow %d pending, want 0 and 0", n, len(d.pending))
	}
	resp := dnsResponse(dnsQuery(2, "www.example.com", 1)) // matches nothing
	if n := testing.AllocsPerRun(100, func() { d.answer(resp) }); n != 0 {
		t.Errorf("an answer allocates %v times, want 0", n)
	}
	d.close(dnsTimedOut)
}

// TestDNSPendingBudgetSharedAcrossFlowChurn: a client's flows share one
// budget of pending queries however they come and go: one of them ending
// must not hand the client's next flow a fresh budget while its other
// flows still hold theirs, or a client that churns one flow between
// batches restarts its bound each time (design.md: a bound per client).
func TestDNSPendingBudgetSharedAcrossFlowChurn(t *testing.T) {
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5"}
	a := newDNSLog(p, rec, nil)
	b := newDNSLog(p, rec, nil)
	a.close(dnsTimedOut) // b still holds the client's budget
	c := newDNSLog(p, rec, nil)
	defer b.close(dnsTimedOut)
	defer c.close(dnsTimedOut)
	if b.budget != c.budget {
		t.Fatal("a flow opened after another of the client's flows ended got a budget of its own: the client's bound restarts at every churn")
	}
}
