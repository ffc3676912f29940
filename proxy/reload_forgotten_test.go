package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck/destchecktest"
)

// The policies of a reload that takes away the clients' own DNS servers:
// before it any client may ask any DNS server, after it only 10.0.0.2.
// allowed.example is spliced under both.
const (
	anyDNSPolicy = `
policy:
  default: deny
  rules:
    - name: any-dns
      protocols: [udp]
      ports: [53]
      action: allow
    - name: ok
      domains: ["allowed.example"]
      action: splice
`
	trustedDNSPolicy = `
policy:
  default: deny
  rules:
    - name: trusted-dns
      dest_cidrs: ["10.0.0.2/32"]
      protocols: [udp]
      ports: [53]
      action: allow
    - name: ok
      domains: ["allowed.example"]
      action: splice
`
)

// wireChecker has the proxy use dc as the appliance does.
func wireChecker(dc *destcheck.Checker) func(*Config) {
	return func(c *Config) {
		c.DestinationCheck = dc.Check
		c.DNSGeneration = dc.Generation
		c.DestinationLookedUp = dc.LookedUp
	}
}

// lookupResolver is a resolver on loopback for the checker's own lookups,
// which resolves name to addr (a 1 h TTL).
func lookupResolver(t *testing.T, name string, addr netip.Addr) netip.AddrPort {
	t.Helper()
	srv, err := destchecktest.Start(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	srv.Set(name, 3600, addr)
	return srv.Addr()
}

// TestSplicedTLSForgottenAnswerRechecked: a spliced connection whose
// destination check passed on a DNS answer the client's own server gave
// (allowed.example at the attacker's address) used to go on after a
// reload that forgot that answer, for as long as the client kept it busy:
// its "ok" held, although the only evidence for it was the answer the
// reload withdrew (found by review r1bypass F4). Now it is checked again on
// its next bytes and ends, recorded as ended by the reload. A connection
// whose check passed on the appliance's own lookup, or whose answer the
// reload did not forget (the same file again), goes on unchecked.
func TestSplicedTLSForgottenAnswerRechecked(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resolver bool // the appliance's own lookup finds the address
		observed bool // the client was told the address
		forget   bool // the reload forgets the observed answers
		after    string
		ends     bool
	}{
		{"observed-forgotten", false, true, true, trustedDNSPolicy, true},
		{"observed-forgotten-audit", false, true, true, strings.Replace(trustedDNSPolicy, "default: deny", "mode: audit\n  default: deny", 1), false},
		{"observed-kept", false, true, false, anyDNSPolicy, false},
		{"looked-up-forgotten", true, false, true, trustedDNSPolicy, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := rawEchoServer(t)
			var cfg destcheck.Config
			if tc.resolver {
				cfg.Resolver = lookupResolver(t, "allowed.example", dst.Addr())
			}
			dc := destcheck.New(cfg)
			t.Cleanup(dc.Close)
			r := newClsRig(t, anyDNSPolicy, clsOptions{check: dc.Check, config: wireChecker(dc)})
			if tc.observed {
				ep := fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef))
				dc.Observe(ep, aResponse(dnsQuery(7, "allowed.example", 1), dst.Addr()))
			}
			c := r.dial(t, dst)
			defer c.Close()
			hello := captureClientHello(t, &tls.Config{ServerName: "allowed.example"})
			c.Write(hello)
			if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
				t.Fatalf("not relayed before the reload: %v", err)
			}
			checks := dc.Stats().Checks
			if tc.forget {
				dc.ForgetObserved() // before the store, as the appliance's reload does
			}
			r.reloadPolicy(t, tc.after)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var relayed int
			for i := range 3 {
				msg := fmt.Appendf(nil, "exfil-%d", i)
				c.Write(msg)
				if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
					break
				}
				relayed++
			}
			c.Close()
			rec := r.record(t, c, "tls")
			if tc.ends {
				if relayed != 0 {
					t.Fatalf("%d messages relayed after the reload forgot the answer that vouched for the destination", relayed)
				}
				if rec.Action != "deny" || rec.Rule != "ok" || rec.Result != "denied" || rec.DestCheck != "mismatch" ||
					!strings.Contains(rec.Error, "ended by a policy reload: its destination fails the destination check") ||
					!strings.Contains(rec.Error, "no address of allowed.example could be looked up") ||
					rec.Policy != r.p.cfg.Policy.Load().ID() || rec.BytesOut != int64(len(hello)) {
					t.Fatalf("record %+v; want it ended by the reload for its destination check, only the ClientHello out", rec)
				}
				return
			}
			if relayed != 3 {
				t.Fatalf("%d of 3 messages relayed after the reload; want the connection to go on", relayed)
			}
			if rec.Action != "splice" || rec.Result == "denied" {
				t.Fatalf("record %+v; want it spliced, not denied", rec)
			}
			if strings.HasSuffix(tc.name, "-audit") {
				// Audited: checked again, the failure recorded, not acted on.
				if rec.DestCheck != "mismatch" || !strings.Contains(rec.Error, "no address of allowed.example could be looked up") {
					t.Fatalf("record %+v; want the audit to record the failed check", rec)
				}
				return
			}
			if n := dc.Stats().Checks; rec.DestCheck != "ok" || n != checks {
				t.Fatalf("record %+v, %d checks after the reload; want the pass to hold, not checked again", rec, n-checks)
			}
		})
	}
}

// TestQUICForgottenAnswerEndsFlow: as for spliced TLS, a QUIC flow whose
// destination check passed on an observed answer a reload forgot used to
// go on. On the packet path no lookup may wait: it goes on only if the
// appliance's own lookup vouches for its destination by then, and ends,
// under an enforcing policy, otherwise.
func TestQUICForgottenAnswerEndsFlow(t *testing.T) {
	const web = "policy:\n  default: deny\n  rules:\n    - name: web\n      domains: [\"www.example.test\"]\n      action: allow\n"
	flight := quicFirstFlight(t, "www.example.test")
	for _, tc := range []struct {
		name   string
		lookup bool // the appliance looked the name up since the flow's check
		ends   bool
	}{
		{"forgotten", false, true},
		{"looked-up-since", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := newUDPSink(t, true)
			var cfg destcheck.Config
			if tc.lookup {
				cfg.Resolver = lookupResolver(t, "www.example.test", dst.addr().Addr())
			}
			dc := destcheck.New(cfg)
			t.Cleanup(dc.Close)
			const ep = "vpce-00000000000000007" // FlowInfo.Endpoint 7
			dc.Observe(ep, aResponse(dnsQuery(7, "www.example.test", 1), dst.addr().Addr()))
			p, h, recs := udpProxy(t, web, func(c *Config) {
				wireChecker(dc)(c)
				c.UDPIdleTimeout = time.Minute
			})
			c, _ := startFlow(p, quicClient, dst.addr(), flight...)
			for range flight {
				<-c.out
			}
			dc.ForgetObserved()
			if tc.lookup {
				if err := dc.Check(context.Background(), ep, "www.example.test", dst.addr().Addr()); err != nil {
					t.Fatal(err)
				}
			}
			after := mustPolicy(t, web)
			h.Store(after)
			c.inject(flight[0])
			if !tc.ends {
				select {
				case <-c.out:
				case <-time.After(3 * time.Second):
					t.Fatal("a flow the appliance's own lookup vouches for was cut by the reload")
				}
				return
			}
			rec := oneRecord(t, recs)
			if rec.Kind != "quic" || rec.Action != "deny" || rec.Rule != "web" || rec.Result != "denied" || rec.Policy != after.ID() ||
				!strings.Contains(rec.Error, "ended by a policy reload: the DNS answer its destination check passed on was forgotten") {
				t.Fatalf("record %+v; want the QUIC flow ended by the reload for its forgotten answer", rec)
			}
			time.Sleep(100 * time.Millisecond)
			if n := len(dst.received()); n != len(flight) {
				t.Fatalf("the destination received %d datagrams, want the %d of the first flight only", n, len(flight))
			}
		})
	}
}
