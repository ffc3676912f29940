package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// A client's next recorded denial says how many went unrecorded before
// it, one included. (Kills the mutant `skipped > 1` in denyLimited: a
// single unrecorded denial vanished from the client's records.)
func TestOneSkippedDenialNamed(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: deny\n", clsOptions{})
	flow := netstack.FlowInfo{Endpoint: 1, Client: netip.MustParseAddrPort("192.0.2.7:1000"), Dest: netip.MustParseAddrPort("198.51.100.1:443")}
	k := clientShareKey(flow)
	var l recordLimiter
	rate := recordRate{burst: 1, perSecond: 1}
	t0 := time.Now()
	for i, at := range []time.Duration{0, 100 * time.Millisecond, 1200 * time.Millisecond} {
		rec := newRecord("tcp", flow)
		rec.ClientPort = uint16(2000 + i)
		r.p.denyLimited(&l, rate, rec, t0.Add(at), k, "denied by policy", "more refused")
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		var got []string
		for _, rec := range r.recs.parse(t) {
			if rec.Kind == "tcp" {
				got = append(got, rec.Error)
			}
		}
		if len(got) == 2 {
			if !strings.Contains(got[1], "1 more refused") {
				t.Errorf("second recorded denial %q, want it to say 1 more refused went unrecorded", got[1])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("records %q, want 2", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
