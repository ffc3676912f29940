package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestShareIPv6ClientPrefix: two hosts whose addresses share a /80 (one
// picked an address in the other's). By default they are one client: A
// fills the share, B's first flow is refused, and the record says the /80
// holds the share, not B. With --ipv6-client-prefix 128 B has a share of
// its own.
func TestShareIPv6ClientPrefix(t *testing.T) {
	t.Cleanup(func() { clientkey.SetIPv6Bits(clientkey.DefaultIPv6Bits) })
	a := netstack.FlowInfo{Endpoint: 1, Client: netip.MustParseAddrPort("[2001:db8:0:1:abcd:1111:2222:3333]:5000")}
	b := netstack.FlowInfo{Endpoint: 1, Client: netip.MustParseAddrPort("[2001:db8:0:1:abcd:9999:8888:7777]:53000")}
	const limit = 4
	for _, c := range []struct {
		bits   int
		ok     bool
		record string
	}{
		{80, false, "the client's /80 holds 4 UDP flows, its share (--max-udp-flows-per-client)"},
		{128, true, ""},
	} {
		if err := clientkey.SetIPv6Bits(c.bits); err != nil {
			t.Fatal(err)
		}
		var s udpShares
		now := time.Now()
		for i := range limit {
			if ok, _ := s.acquire(clientShareKey(a), limit, now); !ok {
				t.Fatalf("/%d: A refused at %d", c.bits, i)
			}
		}
		ok, rec := s.acquire(clientShareKey(b), limit, now)
		if ok != c.ok || rec != c.record {
			t.Errorf("/%d: B's first flow: ok=%v record %q, want ok=%v record %q", c.bits, ok, rec, c.ok, c.record)
		}
	}
	// An IPv4 client's share is its own: the record says so.
	var s udpShares
	v4 := shareKey{endpoint: 1, client: netip.MustParseAddr("10.0.0.1")}
	s.acquire(v4, 1, time.Now())
	if _, rec := s.acquire(v4, 1, time.Now()); rec != "the client holds 1 UDP flows, its share (--max-udp-flows-per-client)" {
		t.Errorf("IPv4 record %q", rec)
	}
}
