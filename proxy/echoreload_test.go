package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestEchoAllowedRedecidedAfterReload: a ping allowed before a reload
// used to go on under the old policy for as long as it kept sending. Its
// next request after the reload is decided again: a reload that still
// allows it lets it go on; one that denies it drops the request, ends the
// flow with a record saying the reload denied it, and remembers it as a
// denied flow, so that its further requests get no reply and no record.
func TestEchoAllowedRedecidedAfterReload(t *testing.T) {
	r := newEchoRig(t, "policy: {default: allow}\n", func(c *Config) { c.EchoIdleTimeout = time.Minute })
	h := r.p.cfg.Policy
	dst := netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, dst, 4242, 1, "one")
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v, want one", got)
	}
	h.Store(mustPolicy(t, "policy:\n  default: deny\n  rules:\n    - {name: ping, protocols: [icmp], action: allow}\n"))
	r.ping(t, echoRigClient, dst, 4242, 2, "two")
	if got := r.replies(2); len(got) != 2 {
		t.Fatalf("replies %+v: a ping the new policy still allows was cut", got)
	}
	h.Store(mustPolicy(t, "policy:\n  default: allow\n  rules:\n    - {name: no-loopback-ping, protocols: [icmp], dest_cidrs: [\"127.0.0.0/8\"], action: deny}\n"))
	for seq := uint16(3); seq < 8; seq++ {
		r.ping(t, echoRigClient, dst, 4242, seq, "more")
	}
	rec := r.record(t, dst)
	if rec.Action != "deny" || rec.Rule != "no-loopback-ping" || rec.Result != "denied" ||
		!strings.Contains(rec.Error, "policy reload") || rec.Packets != 2 {
		t.Fatalf("record %+v; want the ping ended as denied by no-loopback-ping after a reload, 2 requests relayed", rec)
	}
	time.Sleep(200 * time.Millisecond)
	if got := r.replies(3); len(got) != 2 {
		t.Fatalf("replies %+v: requests after a reload that denies the ping were relayed", got)
	}
	if n := len(r.sink.parse(t)); n != 1 {
		t.Fatalf("%d records, want the flow's one: its requests after the reload were recorded again", n)
	}
	r.p.echo.mu.Lock()
	n, denied := len(r.p.echo.flows), r.p.echo.denied
	r.p.echo.mu.Unlock()
	if n != 1 || denied != 1 {
		t.Fatalf("%d flows, %d denied; want the ping remembered as one denied flow", n, denied)
	}
}

// TestEchoReloadDeniedNoRoomNotUnrecorded: a ping that a reload denies
// when its client's share of remembered denied flows is full cannot be
// remembered as denied, but its flow's record says the reload ended it:
// the request is not counted in echo_denied_unrecorded, as it used to be.
func TestEchoReloadDeniedNoRoomNotUnrecorded(t *testing.T) {
	r := newEchoRig(t, "policy:\n  default: allow\n  rules:\n    - {name: no-3, protocols: [icmp], dest_cidrs: [\"127.0.0.3/32\"], action: deny}\n",
		func(c *Config) { c.EchoIdleTimeout = time.Minute })
	r.p.echo.mu.Lock()
	r.p.echo.deniedShare = 1 // stands for 1,024
	r.p.echo.mu.Unlock()
	denied, allowed := netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, denied, 4242, 1, "hoard") // takes the client's one denied flow
	if rec := r.record(t, denied); rec.Action != "deny" {
		t.Fatalf("record %+v; want the ping to 127.0.0.3 denied", rec)
	}
	r.ping(t, echoRigClient, allowed, 4243, 1, "one")
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v, want one", got)
	}
	r.p.cfg.Policy.Store(mustPolicy(t, "policy:\n  default: allow\n  rules:\n    - {name: no-loopback-ping, protocols: [icmp], dest_cidrs: [\"127.0.0.0/8\"], action: deny}\n"))
	r.ping(t, echoRigClient, allowed, 4243, 2, "two")
	rec := r.record(t, allowed)
	if rec.Rule != "no-loopback-ping" || rec.Result != "denied" || !strings.Contains(rec.Error, "policy reload") {
		t.Fatalf("record %+v; want the ping ended by the reload", rec)
	}
	if got := r.p.Stats().EchoUnrecorded; got != 0 {
		t.Fatalf("echo_denied_unrecorded %d, want 0: the request the reload denied has its flow's record", got)
	}
	time.Sleep(200 * time.Millisecond)
	if got := r.replies(2); len(got) != 1 {
		t.Fatalf("replies %+v: the request after the reload was relayed", got)
	}
	if n := len(r.sink.parse(t)); n != 2 {
		t.Fatalf("%d records, want 2: the denied ping's and the reloaded one's", n)
	}
}
