package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestForbiddenRecordNamesNoRule: a forbidden destination is refused before
// any rule is asked, so its deny record names no rule, on every path (TCP,
// UDP, echo), even under a policy whose default allows; a record saying
// rule "default" would read as a decision of the policy.
func TestForbiddenRecordNamesNoRule(t *testing.T) {
	const allow = "policy: {default: allow}\n"
	imds := netip.MustParseAddr("169.254.169.254")
	client := netip.MustParseAddrPort("198.18.0.5:40000")
	check := func(t *testing.T, recs []records.Record, kind string) {
		t.Helper()
		if len(recs) != 1 {
			t.Fatalf("%d records, want 1: %+v", len(recs), recs)
		}
		r := recs[0]
		if r.Kind != kind || r.Action != "deny" || r.Result != "denied" || r.Rule != "" || r.Error == "" {
			t.Fatalf("record %+v, want a %s deny naming no rule", r, kind)
		}
	}
	t.Run("tcp", func(t *testing.T) {
		p, _, sink := udpProxy(t, allow, nil)
		p.handleTCP(netstack.FlowInfo{Endpoint: 7, Client: client, Dest: netip.AddrPortFrom(imds, 80)}, refusedAcceptor{})
		check(t, sink.records(t, 1), "tcp")
	})
	t.Run("udp", func(t *testing.T) {
		p, _, sink := udpProxy(t, allow, func(c *Config) { c.UDPIdleTimeout = time.Minute })
		_, done := startFlow(p, client, netip.AddrPortFrom(imds, 53), []byte("query"))
		<-done
		check(t, sink.records(t, 1), "udp")
	})
	t.Run("icmp", func(t *testing.T) {
		p, _, sink := echoProxy(t, allow, func(c *Config) { c.AllowLoopback = false })
		t.Cleanup(p.Close)
		p.HandleEcho(echoReq("127.0.0.1", 1, 1))
		check(t, sink.records(t, 1), "icmp")
	})
}

// TestUndecidedRecord: a flow that ends before the policy decides is
// recorded as undecided, naming no rule, not as allowed by the default:
// here under a policy whose default denies, with a rule that would allow
// the connection by name and one that would allow it, as TLS, on its
// addresses, so that it can be neither denied on its addresses alone nor
// held until a name comes (tcpname.go): the destination is dialled first.
// A port scan of closed ports must not read as traffic the appliance
// allowed.
func TestUndecidedRecord(t *testing.T) {
	const doc = `
policy:
  default: deny
  rules:
    - {name: web, domains: [example.com], action: allow}
    - {name: lan-tls, dest_cidrs: ["127.0.0.0/8"], protocols: [tls], action: allow}
`
	client := netip.MustParseAddrPort("198.18.0.5:40000")
	check := func(t *testing.T, recs []records.Record, kind, result string) {
		t.Helper()
		if len(recs) != 1 {
			t.Fatalf("%d records, want 1: %+v", len(recs), recs)
		}
		r := recs[0]
		if r.Kind != kind || r.Action != "undecided" || r.Rule != "" || r.Result != result || r.Error == "" {
			t.Fatalf("record %+v, want a %s record, action undecided, no rule, result %s", r, kind, result)
		}
	}
	t.Run("tcp dial refused", func(t *testing.T) {
		p, _, sink := udpProxy(t, doc, nil)
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := netip.MustParseAddrPort(ln.Addr().String())
		ln.Close() // nothing listens there now: the dial is refused
		p.handleTCP(netstack.FlowInfo{Endpoint: 7, Client: client, Dest: closed}, refusedAcceptor{})
		check(t, sink.records(t, 1), "tcp", "refused")
	})
	t.Run("udp first datagram lost", func(t *testing.T) {
		p, _, sink := udpProxy(t, doc, func(c *Config) { c.UDPIdleTimeout = 100 * time.Millisecond })
		_, done := startFlow(p, client, netip.MustParseAddrPort("127.0.0.1:9"))
		<-done
		check(t, sink.records(t, 1), "udp", "timeout")
	})
}
