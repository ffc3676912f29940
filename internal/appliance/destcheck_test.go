package appliance

// End-to-end tests of the destination check (policy destination_check:
// dns) through the in-process rig: a client that sends an allowed name (SNI
// or Host) towards an address the name does not resolve to is refused; the
// same name towards its real address still works.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck/destchecktest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

const dcName = "allowed.example.test"

// dcPolicy allows one name, spliced, and nothing else.
const dcPolicy = `
policy:
  mode: %s
  default: deny
  destination_check: %s
  rules:
    - name: allowed
      domains: ["allowed.example.test", "alias.example.test", "broken.example.test"]
      protocols: [tls, http]
      action: splice
    - name: resolvers
      protocols: [udp]
      ports: [53]
      action: allow
`

// dcOrigin is a server for dcName on one address: HTTPS and plain HTTP,
// each answering with the address it listens on.
type dcOrigin struct {
	addr       netip.Addr
	tls, plain netip.AddrPort
	roots      *x509.CertPool
}

func startDCOrigin(t *testing.T, addr netip.Addr, ca *certs.CA) *dcOrigin {
	t.Helper()
	leaf := must(must(certs.NewMinter(ca, certs.MinterOptions{}))(t).LeafFor([]string{dcName, "alias.example.test"}, nil))(t)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "origin %s host %s", addr, r.Host)
	})
	o := &dcOrigin{addr: addr, roots: x509.NewCertPool()}
	o.roots.AddCert(ca.Certificate())
	tln := must(tls.Listen("tcp", netip.AddrPortFrom(addr, 0).String(), &tls.Config{Certificates: []tls.Certificate{*leaf}}))(t)
	pln := must(net.Listen("tcp", netip.AddrPortFrom(addr, 0).String()))(t)
	for _, ln := range []net.Listener{tln, pln} {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	o.tls, o.plain = tln.Addr().(*net.TCPAddr).AddrPort(), pln.Addr().(*net.TCPAddr).AddrPort()
	return o
}

// dcRig is a rig with the destination-check policy and two origins serving
// dcName: real, which the name resolves to, and other, which it does not.
type dcRig struct {
	*rig
	real, other *dcOrigin
}

func newDCRig(t *testing.T, mode, check string, mutate func(*Options)) *dcRig {
	t.Helper()
	tn := newTestNet()
	ca := must(certs.Generate("destination check origins CA"))(t)
	real, other := startDCOrigin(t, tn.server(3), ca), startDCOrigin(t, tn.server(4), ca)
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(dcPolicy, mode, check)), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, func(o *Options) {
		o.Config = cfg
		if mutate != nil {
			mutate(o)
		}
	}, nil)
	r.dns.Set(dcName, 60, real.addr)
	r.dns.SetCNAME("alias.example.test", dcName, 60)
	r.dns.SetRecord("broken.example.test", destchecktest.Record{RCode: dnsmessage.RCodeServerFailure})
	return &dcRig{rig: r, real: real, other: other}
}

// getTLS connects through the appliance to dst with SNI name and asks for
// /hello; it returns the body, or the error of the handshake or request,
// and the client's port.
func getTLS(t *testing.T, c *gwlbsim.ClientStack, dst netip.AddrPort, name string, roots *x509.CertPool) (string, uint16, error) {
	t.Helper()
	conn, err := c.DialTCP(ctxT(t, 5*time.Second), dst)
	if err != nil {
		return "", 0, err
	}
	defer conn.Close()
	port := conn.LocalAddr().(*net.TCPAddr).AddrPort().Port()
	tc := tls.Client(conn, &tls.Config{ServerName: name, RootCAs: roots})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return "", port, err
	}
	body, err := dcHTTPGet(tc, name)
	return body, port, err
}

// getPlain sends GET /hello with Host name through the appliance to dst.
func getPlain(t *testing.T, c *gwlbsim.ClientStack, dst netip.AddrPort, name string) (int, string, uint16) {
	t.Helper()
	conn := must(c.DialTCP(ctxT(t, 5*time.Second), dst))(t)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	port := conn.LocalAddr().(*net.TCPAddr).AddrPort().Port()
	fmt.Fprintf(conn, "GET /hello HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", name)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("plain HTTP to %s with Host %s: %v", dst, name, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	bufio.NewReader(resp.Body).WriteTo(&b)
	return resp.StatusCode, b.String(), port
}

func dcHTTPGet(c net.Conn, host string) (string, error) {
	fmt.Fprintf(c, "GET /hello HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, err = bufio.NewReader(resp.Body).WriteTo(&b)
	return b.String(), err
}

// recordFor waits for the record of kind from the client's port.
func (r *dcRig) recordFor(kind string, port uint16) records.Record {
	r.t.Helper()
	var rec records.Record
	r.records(func(rs []records.Record) bool {
		for _, x := range rs {
			if x.Kind == kind && x.ClientPort == port {
				rec = x
				return true
			}
		}
		return false
	})
	return rec
}

// wantMismatch checks a record of a flow refused for naming an address the
// name does not resolve to.
func wantMismatch(t *testing.T, rec records.Record, action string, dest netip.Addr, name, resolvesTo string) {
	t.Helper()
	named := rec.SNI == name || rec.Host == name
	wantErr := fmt.Sprintf("%s is not an address of %s (%s)", dest, name, resolvesTo)
	if rec.Action != action || rec.DestCheck != "mismatch" || !named || rec.DestIP != dest.String() || !strings.Contains(rec.Error, wantErr) {
		t.Errorf("record %+v:\nwant action %s, dest_check mismatch, the name %s, dest_ip %s, and an error saying %q", rec, action, name, dest, wantErr)
	}
}

func TestDestCheckSpoofedNameDenied(t *testing.T) {
	r := newDCRig(t, "enforce", "dns", nil)
	realA, otherA := r.real.addr, r.other.addr

	t.Run("SNI", func(t *testing.T) {
		body, port, err := getTLS(t, r.client, r.real.tls, dcName, r.real.roots)
		if err != nil || body != "origin "+realA.String()+" host "+dcName {
			t.Fatalf("SNI %s to its real address: %q, %v", dcName, body, err)
		}
		if rec := r.recordFor("tls", port); rec.Action != "splice" || rec.DestCheck != "ok" || rec.SNI != dcName {
			t.Errorf("record of the real address: %+v; want splice, dest_check ok", rec)
		}
		_, port, err = getTLS(t, r.client, r.other.tls, dcName, r.other.roots)
		if err == nil {
			t.Fatalf("SNI %s to %s, an address it does not resolve to: the handshake succeeded", dcName, otherA)
		}
		wantMismatch(t, r.recordFor("tls", port), "deny", otherA, dcName, "resolves to "+realA.String())
	})

	t.Run("Host", func(t *testing.T) {
		status, body, port := getPlain(t, r.client, r.real.plain, dcName)
		if status != 200 || body != "origin "+realA.String()+" host "+dcName {
			t.Fatalf("Host %s to its real address: %d %q", dcName, status, body)
		}
		if rec := r.recordFor("http", port); rec.Action != "allow" || rec.DestCheck != "ok" {
			t.Errorf("record of the real address: %+v; want allow, dest_check ok", rec)
		}
		status, body, port = getPlain(t, r.client, r.other.plain, dcName)
		if status != http.StatusForbidden || strings.Contains(body, "origin") {
			t.Errorf("Host %s to %s: %d %q, want 403 from the appliance", dcName, otherA, status, body)
		}
		wantMismatch(t, r.recordFor("http", port), "deny", otherA, dcName, "resolves to "+realA.String())
	})

	t.Run("Alias", func(t *testing.T) {
		// alias.example.test is a CNAME of the allowed name: its addresses
		// are the target's.
		if _, _, err := getTLS(t, r.client, r.real.tls, "alias.example.test", r.real.roots); err != nil {
			t.Errorf("an alias to its real address: %v", err)
		}
		_, port, err := getTLS(t, r.client, r.other.tls, "alias.example.test", r.other.roots)
		if err == nil {
			t.Error("an alias to another address: the handshake succeeded")
		}
		wantMismatch(t, r.recordFor("tls", port), "deny", otherA, "alias.example.test", "resolves to "+realA.String())
	})

	t.Run("LookupFails", func(t *testing.T) {
		// A lookup that fails denies too, saying why.
		status, _, port := getPlain(t, r.client, r.real.plain, "Broken.Example.Test")
		rec := r.recordFor("http", port)
		wantErr := "no address of broken.example.test could be looked up: resolver " + r.dns.Addr().String() + " answered SERVFAIL"
		if status != http.StatusForbidden || rec.Action != "deny" || rec.DestCheck != "mismatch" || !strings.Contains(rec.Error, wantErr) {
			t.Errorf("a name whose lookup fails: status %d, record %+v; want a deny with dest_check mismatch saying %q", status, rec, wantErr)
		}
	})
}

// In audit mode a mismatch is recorded and the flow goes on; with
// destination_check: off the name is trusted.
func TestDestCheckAuditAndOff(t *testing.T) {
	t.Run("audit", func(t *testing.T) {
		r := newDCRig(t, "audit", "dns", nil)
		body, port, err := getTLS(t, r.client, r.other.tls, dcName, r.other.roots)
		if err != nil || !strings.HasPrefix(body, "origin "+r.other.addr.String()) {
			t.Fatalf("audit mode, SNI to another address: %q, %v; want it through", body, err)
		}
		wantMismatch(t, r.recordFor("tls", port), "splice", r.other.addr, dcName, "resolves to "+r.real.addr.String())
		status, _, port := getPlain(t, r.client, r.other.plain, dcName)
		if status != 200 {
			t.Errorf("audit mode, Host to another address: %d, want 200", status)
		}
		wantMismatch(t, r.recordFor("http", port), "allow", r.other.addr, dcName, "resolves to "+r.real.addr.String())
	})
	t.Run("off", func(t *testing.T) {
		r := newDCRig(t, "enforce", "off", nil)
		if _, port, err := getTLS(t, r.client, r.other.tls, dcName, r.other.roots); err != nil {
			t.Errorf("destination_check off, SNI to another address: %v", err)
		} else if rec := r.recordFor("tls", port); rec.DestCheck != "" || rec.Action != "splice" {
			t.Errorf("destination_check off: record %+v; want splice, no dest_check", rec)
		}
		if q := r.dns.Queries(dcName); q != 0 {
			t.Errorf("destination_check off: the appliance looked %s up %d times", dcName, q)
		}
	})
}

// startDNS53 starts a resolver on port 53 of addr for the data path: the
// appliance reads DNS on destination port 53 only.
func startDNS53(t *testing.T, addr netip.Addr) *destchecktest.Server {
	t.Helper()
	srv, err := destchecktest.Listen(netip.AddrPortFrom(addr, 53))
	if errors.Is(err, syscall.EACCES) {
		testenv.RequirePrivileged(t, "binding port 53 needs root (or CAP_NET_BIND_SERVICE): the appliance reads DNS answers on destination port 53")
	} else if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// queryA asks srv for name's A records through the appliance, as a client
// would, and returns the addresses.
func queryA(t *testing.T, c *gwlbsim.ClientStack, srv netip.AddrPort, name string) []netip.Addr {
	t.Helper()
	conn := must(c.DialUDP(srv))(t)
	defer conn.Close()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4242, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name + "."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q := must(b.Finish())(t)
	must(conn.Write(q))(t)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n := must(conn.Read(buf))(t)
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("the answer for %s: %v", name, err)
	}
	var addrs []netip.Addr
	for _, a := range m.Answers {
		if a, ok := a.Body.(*dnsmessage.AResource); ok {
			addrs = append(addrs, netip.AddrFrom4(a.A))
		}
	}
	return addrs
}

// TestDestCheckObservedAnswers: the appliance's own resolver knows nothing
// of the name, but the answer a client got through the data path vouches
// for the address, for that endpoint's clients only.
func TestDestCheckObservedAnswers(t *testing.T) {
	r := newDCRig(t, "enforce", "dns", nil)
	r.dns.Delete(dcName) // the appliance's own lookups: NXDOMAIN
	dataDNS := startDNS53(t, r.net.server(6))
	dataDNS.Set(dcName, 60, r.real.addr)

	// Before any answer: the own lookup says NXDOMAIN.
	_, port, err := getTLS(t, r.client, r.real.tls, dcName, r.real.roots)
	if err == nil {
		t.Fatal("before any DNS answer: the handshake succeeded")
	}
	wantMismatch(t, r.recordFor("tls", port), "deny", r.real.addr, dcName, "resolves to no address: NXDOMAIN")

	if got := queryA(t, r.client, dataDNS.Addr(), dcName); len(got) != 1 || got[0] != r.real.addr {
		t.Fatalf("DNS through the appliance: %v", got)
	}
	body, port, err := getTLS(t, r.client, r.real.tls, dcName, r.real.roots)
	if err != nil || !strings.HasPrefix(body, "origin "+r.real.addr.String()) {
		t.Fatalf("after the client's own DNS answer: %q, %v", body, err)
	}
	if rec := r.recordFor("tls", port); rec.DestCheck != "ok" || rec.Action != "splice" {
		t.Errorf("record %+v: want splice, dest_check ok", rec)
	}
	// The answer vouches for nothing else.
	_, port, err = getTLS(t, r.client, r.other.tls, dcName, r.other.roots)
	if err == nil {
		t.Error("another address after the DNS answer: the handshake succeeded")
	}
	wantMismatch(t, r.recordFor("tls", port), "deny", r.other.addr, dcName, "resolves to "+r.real.addr.String())

	// A client behind another GWLB endpoint saw no such answer.
	other := r.sim.Endpoint(0x00000000000000ff, 0x5555666677778888)
	client2 := must(other.NewClientStack(clientV4, clientV6))(t)
	_, port, err = getTLS(t, client2, r.real.tls, dcName, r.real.roots)
	if err == nil {
		t.Error("another endpoint's client: the handshake succeeded on the first endpoint's DNS answer")
	}
	if rec := r.recordFor("tls", port); rec.Action != "deny" || rec.DestCheck != "mismatch" || rec.Endpoint != "vpce-000000000000000ff" {
		t.Errorf("another endpoint's client: record %+v; want a deny with dest_check mismatch", rec)
	}
}

// With --dns-observe=false, relayed answers vouch for nothing.
func TestDestCheckObserveOff(t *testing.T) {
	r := newDCRig(t, "enforce", "dns", func(o *Options) { o.DNSObserve = false })
	r.dns.Delete(dcName)
	dataDNS := startDNS53(t, r.net.server(6))
	dataDNS.Set(dcName, 60, r.real.addr)
	if got := queryA(t, r.client, dataDNS.Addr(), dcName); len(got) != 1 {
		t.Fatalf("DNS through the appliance: %v", got)
	}
	if _, _, err := getTLS(t, r.client, r.real.tls, dcName, r.real.roots); err == nil {
		t.Error("--dns-observe=false: a relayed DNS answer let the flow through")
	}
}

// Options naming a bad resolver or cache size are refused, naming the flag.
func TestDestCheckOptions(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.DNSResolver = "resolver.example" }, `--dns-resolver "resolver.example": want an IP address`},
		{func(o *Options) { o.DNSResolver = "10.0.0.2:0" }, "--dns-resolver"},
		{func(o *Options) { o.DNSCacheSize = -1 }, "--dns-cache-size -1: must not be negative"},
		{func(o *Options) { o.DNSCacheSize = 100_000_001 }, "--dns-cache-size 100000001: must be at most 100000000"},
	} {
		o := DefaultOptions()
		tc.mutate(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want %q", err, tc.want)
		}
	}
	o := DefaultOptions()
	o.DNSResolver = "[2001:db8::53]:5353"
	if err := o.Validate(); err != nil {
		t.Errorf("an IPv6 resolver with a port: %v", err)
	}
	if !o.DNSObserve || o.DNSCacheSize <= 0 {
		t.Errorf("defaults: DNSObserve %v, DNSCacheSize %d", o.DNSObserve, o.DNSCacheSize)
	}
}
