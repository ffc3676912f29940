package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// loopbackSenders are the GENEVE sender prefixes of these tests: the
// sibling appliances and GWLB nodes are played on loopback.
var loopbackSenders = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// TestSenderGenevePortRefused: a client's UDP flow to the GENEVE port of
// an address GENEVE is accepted from (a sibling appliance in the GWLB's
// subnets, a GWLB node) is refused: sent from this appliance's address, it
// would be taken as the GWLB's, and the client could forge any endpoint,
// client and flow there. Other ports at that address, and the GENEVE port
// elsewhere, are destinations like any other.
func TestSenderGenevePortRefused(t *testing.T) {
	geneve, other := newUDPSink(t, false), newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(c *Config) {
		c.SenderPrefixes = loopbackSenders
		c.GenevePorts = []uint16{geneve.addr().Port()}
		c.UDPIdleTimeout = 300 * time.Millisecond
	})
	_, done := startFlow(p, quicClient, geneve.addr(), []byte("forged GENEVE"))
	<-done
	rec := oneRecord(t, recs)
	if rec.Action != "deny" || !strings.Contains(rec.Error, "GENEVE port of a host GENEVE is accepted from") {
		t.Errorf("the flow to the GENEVE port: record %+v, want it denied as such", rec)
	}
	_, done = startFlow(p, netip.AddrPortFrom(quicClient.Addr(), quicClient.Port()+1), other.addr(), []byte("not GENEVE"))
	<-done
	time.Sleep(100 * time.Millisecond)
	if got := geneve.received(); len(got) != 0 {
		t.Errorf("the GENEVE port got %q", got)
	}
	if got := other.received(); len(got) != 1 {
		t.Errorf("another port at the same address got %q, want the datagram", got)
	}
	// The IPv4 address a NAT64 gateway would deliver to, and elsewhere.
	gp := geneve.addr().Port()
	for dst, want := range map[string]bool{
		"64:ff9b::7f00:1": true, "2002:7f00:1::1": true, "127.0.0.5": true,
		"198.18.0.1": false, "64:ff9b::c612:1": false,
	} {
		if got := p.forbiddenSenderPort(true, netip.AddrPortFrom(netip.MustParseAddr(dst), gp)) != ""; got != want {
			t.Errorf("UDP to %s port %d refused: %v, want %v", dst, gp, got, want)
		}
	}
}

// TestSenderAdminPortRefused: a client's TCP connection to the admin port
// of an address GENEVE is accepted from (a sibling appliance's /stats,
// /metrics and health check) is never dialled; another port there is.
func TestSenderAdminPortRefused(t *testing.T) {
	admin, adminAccepted := countingListener(t)
	r := newClsRig(t, "policy:\n  default: allow\n", clsOptions{config: func(c *Config) {
		c.SenderPrefixes = loopbackSenders
		c.AdminPort = admin.Port()
	}})
	// Made after the rig, so that its cleanup, which closes the connection
	// it holds, comes before the rig's, which waits for the relay to end.
	other, otherAccepted := countingListener(t)
	c := r.dial(t, admin)
	c.Write([]byte("GET /stats HTTP/1.1\r\nHost: sibling\r\n\r\n"))
	rec := r.record(t, c, "tcp")
	if rec.Action != "deny" || rec.Result != "denied" || !strings.Contains(rec.Error, "admin port of a host GENEVE is accepted from") {
		t.Errorf("the connection to the admin port: record %+v, want it denied as such", rec)
	}
	c.Close()
	c = r.dial(t, other)
	c.Write([]byte("GET / HTTP/1.1\r\nHost: other\r\n\r\n"))
	deadline := time.Now().Add(5 * time.Second)
	for otherAccepted.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	c.Close()
	if n := adminAccepted.Load(); n != 0 {
		t.Errorf("the admin port accepted %d connections", n)
	}
	if n := otherAccepted.Load(); n != 1 {
		t.Errorf("another port at the same address accepted %d connections, want 1", n)
	}
}

// TestSenderAdminPortDeniedBeforeAnyName: a connection to a sender's admin
// port that only a domain rule could allow used to be dialled for its
// first request and recorded as that rule's allow with a 502 (the dial
// refused it): it is now refused at its SYN, with a deny record.
func TestSenderAdminPortDeniedBeforeAnyName(t *testing.T) {
	admin, adminAccepted := countingListener(t)
	r := newClsRig(t, "policy:\n  default: deny\n  rules:\n    - name: ok\n      domains: [\"sibling.example\"]\n      action: allow\n", clsOptions{config: func(c *Config) {
		c.SenderPrefixes = loopbackSenders
		c.AdminPort = admin.Port()
	}})
	c := r.dial(t, admin)
	c.Write([]byte("GET /stats HTTP/1.1\r\nHost: sibling.example\r\n\r\n"))
	rec := r.record(t, c, "tcp")
	c.Close()
	if rec.Action != "deny" || rec.Result != "denied" || rec.Rule != "" || !strings.Contains(rec.Error, "admin port") {
		t.Errorf("record %+v, want a deny of the admin port with no rule", rec)
	}
	if n := adminAccepted.Load(); n != 0 {
		t.Errorf("the admin port accepted %d connections", n)
	}
}
