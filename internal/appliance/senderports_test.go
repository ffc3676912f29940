package appliance

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestSenderPortsRefused: the appliance hands its GENEVE sender prefixes
// (--gwlb-cidrs) and its GENEVE and admin ports to the proxy, which
// refuses a client's UDP to the GENEVE port and TCP to the admin port at
// an address inside them: a sibling appliance in the GWLB's subnets (here
// a server of the rig's loopback net, inside --gwlb-cidrs 127.0.0.0/8)
// would take the first as the GWLB's GENEVE, from this appliance's address.
func TestSenderPortsRefused(t *testing.T) {
	// A free port for the admin listener: siblings of the same
	// configuration listen on it too.
	probe := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	adminAddr := probe.Addr().(*net.TCPAddr).AddrPort()
	probe.Close()
	adminPort := adminAddr.Port()
	r := newRig(t, func(o *Options) { o.AdminAddr = adminAddr.String() }, nil)
	var udpGot, tcpGot atomic.Int32
	geneve := serveUDP(t, netip.AddrPortFrom(r.net.server(3), netstack.GenevePort), func([]byte) []byte { udpGot.Add(1); return nil })
	admin := listenTCP(t, netip.AddrPortFrom(r.net.server(4), adminPort), func(c net.Conn) { tcpGot.Add(1); c.Close() })

	u := must(r.client.DialUDP(geneve))(t)
	defer u.Close()
	must(u.Write([]byte("forged GENEVE")))(t)
	if c, err := r.client.DialTCP(ctxT(t, 5*time.Second), admin); err == nil {
		c.Write([]byte("GET /stats HTTP/1.1\r\nHost: sibling\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	recs := r.records(func(rs []records.Record) bool {
		return findRecord(rs, "udp", geneve) != nil && findRecord(rs, "tcp", admin) != nil
	})
	if rec := findRecord(recs, "udp", geneve); rec == nil || rec.Action != "deny" || !strings.Contains(rec.Error, "GENEVE port") {
		t.Errorf("UDP to a sender's GENEVE port: record %+v, want it denied as such", rec)
	}
	if rec := findRecord(recs, "tcp", admin); rec == nil || rec.Result == "ok" || !strings.Contains(rec.Error, "admin port") {
		t.Errorf("TCP to a sender's admin port: record %+v, want it refused as such", rec)
	}
	if udpGot.Load() != 0 || tcpGot.Load() != 0 {
		t.Errorf("the sibling got %d datagrams and %d connections", udpGot.Load(), tcpGot.Load())
	}
}

func TestListenPorts(t *testing.T) {
	for addr, want := range map[string]uint16{":80": 80, "10.0.0.5:8080": 8080, "[::1]:443": 443, "noport": 0, ":0": 0} {
		if got := listenPort("tcp", addr); got != want {
			t.Errorf("listenPort(%q) = %d, want %d", addr, got, want)
		}
	}
	if got := genevePorts(":6081"); len(got) != 1 || got[0] != 6081 {
		t.Errorf("genevePorts(:6081) = %v", got)
	}
	if got := genevePorts("10.0.0.5:7000"); len(got) != 2 || got[0] != 6081 || got[1] != 7000 {
		t.Errorf("genevePorts(10.0.0.5:7000) = %v", got)
	}
}

// TestSenderAdminPortScope: clients' TCP is refused on the admin port only
// at senders named with --gwlb-cidrs, none a /0. With the VPC default, or
// a /0, the prefixes hold every host clients may reach, and the admin port
// (80 by default) is every web server's: the refusal used to refuse plain
// HTTP to the whole VPC, or the whole Internet.
func TestSenderAdminPortScope(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cidrs   []netip.Prefix
		fromVPC bool
		want    uint16
	}{
		{"named subnets", []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24")}, false, 80},
		{"VPC default", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, true, 0},
		{"a /0 named", []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24"), netip.MustParsePrefix("0.0.0.0/0")}, false, 0},
		{"any", nil, false, 0},
	} {
		o := Options{AdminAddr: ":80", GWLBCIDRs: tc.cidrs, gwlbCIDRsFromVPC: tc.fromVPC, AnyGWLBSender: tc.cidrs == nil}
		if got := senderAdminPort(&o); got != tc.want {
			t.Errorf("%s: admin port refused at the senders: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestSenderPrefixesAny: --gwlb-cidrs any refuses clients' UDP to the
// GENEVE port everywhere, as 0.0.0.0/0 does (configuration.md says the two
// are one): it used to hand the proxy no prefixes, which refuses nothing,
// so a client could send forged GENEVE to a sibling appliance or a GWLB
// node from this appliance's address.
func TestSenderPrefixesAny(t *testing.T) {
	o := Options{GWLBCIDRs: nil, AnyGWLBSender: true}
	got := senderPrefixes(&o)
	for _, a := range []string{"10.0.0.9", "192.0.2.1", "2001:db8::1"} {
		if !slices.ContainsFunc(got, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) }) {
			t.Errorf("--gwlb-cidrs any: prefixes %v leave %s's GENEVE port open", got, a)
		}
	}
	named := []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24")}
	if got := senderPrefixes(&Options{GWLBCIDRs: named}); !slices.Equal(got, named) {
		t.Errorf("named prefixes became %v", got)
	}
}

// TestSenderGenevePortFromFlagRefused: with --geneve-addr on a port other
// than 6081, a client's UDP to that port at a sender's address is refused
// too (configuration.md --gwlb-cidrs: "6081, and --geneve-addr's"). A
// sibling appliance of the same configuration listens there and would take
// the datagram, from this appliance's address inside --gwlb-cidrs, for the
// GWLB's GENEVE: the client could forge endpoints and flows on it. The
// proxy refuses only 6081 unless the appliance hands it the flag's port.
func TestSenderGenevePortFromFlagRefused(t *testing.T) {
	const port = 7081
	r := newRig(t, func(o *Options) {
		ap := netip.MustParseAddrPort(o.GeneveAddr)
		o.GeneveAddr = netip.AddrPortFrom(ap.Addr(), port).String()
	}, nil)
	var got atomic.Int32
	sibling := serveUDP(t, netip.AddrPortFrom(r.net.server(3), port), func([]byte) []byte { got.Add(1); return nil })
	u := must(r.client.DialUDP(sibling))(t)
	defer u.Close()
	must(u.Write([]byte("forged GENEVE")))(t)
	recs := r.records(func(rs []records.Record) bool { return findRecord(rs, "udp", sibling) != nil })
	if rec := findRecord(recs, "udp", sibling); rec == nil || rec.Action != "deny" || !strings.Contains(rec.Error, "GENEVE port") {
		t.Errorf("UDP to a sender's --geneve-addr port %d: record %+v, want it denied as such", port, rec)
	}
	if got.Load() != 0 {
		t.Errorf("the sibling got %d datagrams on its GENEVE port", got.Load())
	}
}
