package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// echoFlowIdent returns the ident (the host ping socket's port) of the
// allowed echo flow to dst.
func echoFlowIdent(t *testing.T, r *echoRig, dst netip.Addr) int {
	t.Helper()
	r.p.echo.mu.Lock()
	defer r.p.echo.mu.Unlock()
	for k, f := range r.p.echo.flows {
		if k.dest == dst && f.conn != nil {
			return f.conn.LocalAddr().(*net.UDPAddr).Port
		}
	}
	t.Fatalf("no allowed echo flow to %s", dst)
	return 0
}

// destEchoReply sends the appliance's ping socket an echo reply carrying
// its ident from dst's own address (a raw socket bound to it), as the
// destination may at any time, asked or not.
func destEchoReply(t *testing.T, dst netip.Addr, ident, seq int, data string) {
	t.Helper()
	raw, err := net.ListenPacket("ip4:icmp", dst.String())
	if err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("raw ICMP socket: %v", err))
	}
	defer raw.Close()
	b, err := (&icmp.Message{Type: ipv4.ICMPTypeEchoReply, Body: &icmp.Echo{ID: ident, Seq: seq, Data: []byte(data)}}).Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.WriteTo(b, &net.IPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
}

// TestEchoRepliesAfterDenyingReload: an allowed ping was decided again
// only on its client's requests, so after a reload that denies it the
// destination's replies (unasked ones here; as well a late answer to a
// request sent before the reload) still reached a silent client, counted
// in bytes_in, and the record said allow/ok. The first reply after the
// reload is decided on before it is relayed: the flow ends denied, the
// record naming the new rule and counting what was relayed before, and
// the client's next requests are dropped without a record of their own.
func TestEchoRepliesAfterDenyingReload(t *testing.T) {
	testenv.RequireRoot(t, "the destination's replies take a raw socket")
	r := newEchoRig(t, "policy: {default: allow}\n", func(c *Config) { c.EchoIdleTimeout = time.Minute })
	dst := netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, dst, 4242, 1, "one")
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v, want one", got)
	}
	ident := echoFlowIdent(t, r, dst)
	r.p.cfg.Policy.Store(mustPolicy(t, "policy:\n  default: allow\n  rules:\n    - {name: no-loopback-ping, protocols: [icmp], dest_cidrs: [\"127.0.0.0/8\"], action: deny}\n"))
	for seq := 100; seq < 105; seq++ {
		destEchoReply(t, dst, ident, seq, "after-the-reload-denied-it")
	}
	time.Sleep(200 * time.Millisecond)
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v: the destination's replies after a reload that denies the ping were relayed", got)
	}
	rec := r.record(t, dst) // written at once: the first reply ended the flow
	if rec.Action != "deny" || rec.Rule != "no-loopback-ping" || rec.Result != "denied" ||
		rec.Error != "ended by a policy reload: denied by policy" || rec.Packets != 1 || rec.BytesOut != 3 || rec.BytesIn != 3 {
		t.Fatalf("record %+v; want the ping ended as denied by no-loopback-ping, counting the one exchange before the reload", rec)
	}
	r.ping(t, echoRigClient, dst, 4242, 2, "two") // a request after the reload
	time.Sleep(200 * time.Millisecond)
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v: a request after a reload that denied the ping was relayed", got)
	}
	if n := len(r.sink.parse(t)); n != 1 {
		t.Fatalf("%d records, want the flow's one", n)
	}
	r.p.echo.mu.Lock()
	n, denied := len(r.p.echo.flows), r.p.echo.denied
	r.p.echo.mu.Unlock()
	if n != 1 || denied != 1 {
		t.Fatalf("%d flows, %d denied; want the ping remembered as one denied flow", n, denied)
	}
}

// TestEchoRepliesAfterAllowingReload: a reload that still allows the ping
// lets the destination's replies through, and the flow goes on under the
// new policy, its record keeping the rule that opened it.
func TestEchoRepliesAfterAllowingReload(t *testing.T) {
	testenv.RequireRoot(t, "the destination's replies take a raw socket")
	r := newEchoRig(t, "policy: {default: allow}\n", func(c *Config) { c.EchoIdleTimeout = 500 * time.Millisecond })
	dst := netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, dst, 4242, 1, "one")
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v, want one", got)
	}
	ident := echoFlowIdent(t, r, dst)
	pol := mustPolicy(t, "policy:\n  default: deny\n  rules:\n    - {name: ping, protocols: [icmp], action: allow}\n")
	r.p.cfg.Policy.Store(pol)
	destEchoReply(t, dst, ident, 100, "still-allowed")
	if got := r.replies(2); len(got) != 2 || got[1] != (echoReply{dst, 4242, 100, "still-allowed"}) {
		t.Fatalf("replies %+v: a reply the new policy still allows was dropped", got)
	}
	r.p.echo.mu.Lock()
	var samePol bool
	for k, f := range r.p.echo.flows {
		samePol = k.dest == dst && f.pol == pol
	}
	r.p.echo.mu.Unlock()
	if !samePol {
		t.Fatal("the flow was not carried over to the new policy")
	}
	rec := r.record(t, dst)
	if rec.Action != "allow" || rec.Rule != "default" || rec.Result != "ok" || rec.BytesIn != 3+int64(len("still-allowed")) {
		t.Fatalf("record %+v; want the ping allowed by the rule that opened it, both replies counted", rec)
	}
}
