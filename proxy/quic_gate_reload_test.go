package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// waitAtGate waits until the flow of c waits at the QUIC gate for the rest
// of its ClientHello: the gate reads the client through its announcements,
// so it is waiting once it has asked for them, its policy loaded long
// before (serve loads it before the first datagram is read).
func waitAtGate(t *testing.T, c *fakeUDPClient) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		waiting := c.notify != nil
		c.mu.Unlock()
		if waiting {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the flow never waited at the QUIC gate")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gateAcrossReload starts a QUIC flow under the policy from, its
// ClientHello's first datagram only; once the gate holds it, reloads to
// the policy to, and sends the rest of the ClientHello. It returns the
// destination, the records and the first flight.
func gateAcrossReload(t *testing.T, from, to string, check func(context.Context, string, string, netip.Addr) error) (*udpSink, *recordSink, *fakeUDPClient, [][]byte) {
	t.Helper()
	flight := quicFirstFlight(t, "www.example.test")
	if len(flight) < 2 {
		t.Skip("quic-go's ClientHello fits one datagram here: the gate holds nothing across a reload")
	}
	p, h, recs := udpProxy(t, from, func(c *Config) {
		c.UDPIdleTimeout = 300 * time.Millisecond
		c.DestinationCheck = check
	})
	dst := newUDPSink(t, false)
	c, _ := startFlow(p, quicClient, dst.addr(), flight[0])
	waitAtGate(t, c)
	h.Store(mustPolicy(t, to))
	for _, d := range flight[1:] {
		c.inject(d)
	}
	return dst, recs, c, flight
}

// TestQUICGateDecidesUnderPolicyAtHello: a QUIC ClientHello completed after
// a reload (the gate holding its first datagram when it came) is decided,
// and its destination checked, under the policy in force when it is
// complete, as a TCP connection's first bytes are (policyAtFirstBytes), and
// its record names that policy. Before, it was decided under the policy
// loaded at the flow's first datagram: a reload that turned the destination
// check on let the flow through unchecked, and the relay's recheck then
// ended it before a datagram was sent, "ended by a policy reload: its
// destination never met the destination check", held as denied so that
// the client's retransmissions never got through; a reload that allowed the
// name left a deny record of the old policy's rule.
func TestQUICGateDecidesUnderPolicyAtHello(t *testing.T) {
	const web = "policy:\n  destination_check: %s\n  default: deny\n  rules:\n    - name: web\n      domains: [\"www.example.test\"]\n      action: allow\n"
	const noWWW = "policy:\n  default: allow\n  rules:\n    - name: no-www\n      domains: [\"www.example.test\"]\n      action: deny\n"
	const allowAll = "policy:\n  default: allow\n"

	t.Run("reload turns the destination check on", func(t *testing.T) {
		from, to := fmt.Sprintf(web, "off"), fmt.Sprintf(web, "dns")
		var checked atomic.Int32
		pass := func(_ context.Context, _, name string, _ netip.Addr) error {
			if name == "www.example.test" {
				checked.Add(1)
			}
			return nil
		}
		dst, recs, _, flight := gateAcrossReload(t, from, to, pass)
		waitReceived(t, dst, len(flight))
		rec := oneRecord(t, recs)
		if rec.Kind != "quic" || rec.Action != "splice" || rec.Rule != "web" || rec.Policy != mustPolicy(t, to).ID() ||
			rec.DestCheck != destCheckOK || rec.Result == "denied" || rec.Error != silentNote { // the sink never answers
			t.Errorf("record %+v; want quic let through (splice) by web under the new policy %s, dest_check ok", rec, mustPolicy(t, to).ID())
		}
		if n := checked.Load(); n != 1 {
			t.Errorf("the destination was checked %d times, want once, at the gate", n)
		}
	})

	t.Run("reload allows the name", func(t *testing.T) {
		dst, recs, _, flight := gateAcrossReload(t, noWWW, allowAll, nil)
		waitReceived(t, dst, len(flight))
		rec := oneRecord(t, recs)
		if rec.Kind != "quic" || rec.Action != "splice" || rec.Rule != "default" || rec.Policy != mustPolicy(t, allowAll).ID() || rec.Result == "denied" {
			t.Errorf("record %+v; want quic let through (splice) by default under the new policy %s", rec, mustPolicy(t, allowAll).ID())
		}
	})

	t.Run("reload denies the name", func(t *testing.T) {
		dst, recs, c, flight := gateAcrossReload(t, allowAll, noWWW, nil)
		rec := oneRecord(t, recs)
		if rec.Kind != "quic" || rec.Action != "deny" || rec.Rule != "no-www" || rec.Policy != mustPolicy(t, noWWW).ID() ||
			rec.Result != "denied" || rec.Error != "denied by policy" {
			t.Errorf("record %+v; want quic denied by no-www of the new policy %s at the gate", rec, mustPolicy(t, noWWW).ID())
		}
		for _, d := range flight { // retransmitted: held as denied
			c.inject(d)
		}
		time.Sleep(100 * time.Millisecond)
		if n := len(dst.received()); n != 0 {
			t.Errorf("the destination received %d datagrams of a flow the policy in force denies", n)
		}
	})
}

// TestQUICGateUnreadableUnderPolicyAtTimeout: a ClientHello the gate could
// not read within quicGateWait is refused, or relayed as udp, by whether
// the policy in force when the gate gives up looks at names, not the one
// loaded at the flow's first datagram.
func TestQUICGateUnreadableUnderPolicyAtTimeout(t *testing.T) {
	defer func(w time.Duration) { quicGateWait = w }(quicGateWait)
	quicGateWait = 300 * time.Millisecond
	const names = "policy:\n  default: allow\n  rules:\n    - name: no-www\n      domains: [\"www.example.test\"]\n      action: deny\n"
	const addrs = "policy:\n  default: allow\n"
	flight := quicFirstFlight(t, "www.example.test")
	if len(flight) < 2 {
		t.Skip("quic-go's ClientHello fits one datagram here: the gate never waits")
	}
	start := func(t *testing.T, from, to string) (*udpSink, records.Record) {
		p, h, recs := udpProxy(t, from, func(c *Config) { c.UDPIdleTimeout = 300 * time.Millisecond })
		dst := newUDPSink(t, false)
		c, _ := startFlow(p, quicClient, dst.addr(), flight[0]) // the rest never comes
		waitAtGate(t, c)
		h.Store(mustPolicy(t, to))
		return dst, oneRecord(t, recs)
	}

	t.Run("reload to a policy that looks at names", func(t *testing.T) {
		dst, rec := start(t, addrs, names)
		if rec.Kind != "quic" || rec.Action != "deny" || rec.Rule != "" || rec.Policy != mustPolicy(t, names).ID() ||
			rec.Result != "denied" || !strings.HasPrefix(rec.Error, "QUIC ClientHello could not be read") {
			t.Errorf("record %+v; want quic refused as unreadable under the new policy %s", rec, mustPolicy(t, names).ID())
		}
		if n := len(dst.received()); n != 0 {
			t.Errorf("the destination received %d datagrams", n)
		}
	})

	t.Run("reload to a policy of addresses alone", func(t *testing.T) {
		dst, rec := start(t, names, addrs)
		waitReceived(t, dst, 1)
		if rec.Kind != "udp" || rec.Action != "allow" || rec.Policy != mustPolicy(t, addrs).ID() ||
			!strings.HasSuffix(rec.Error, "; relayed as udp; "+silentNote) { // the sink never answers
			t.Errorf("record %+v; want relayed as udp under the new policy %s", rec, mustPolicy(t, addrs).ID())
		}
	})
}
