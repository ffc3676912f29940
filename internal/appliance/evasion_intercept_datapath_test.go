package appliance

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// These tests take the interception evasions of issue 9 through the whole
// data path (GENEVE, the stacks, classification, the interceptor) with the
// appliance's own destination check and resolver: the seam tests in
// proxy/intercept show the mechanisms, these that they are wired in.

// evasionOrigin is an HTTP(S) origin on a loopback address: TLS with a
// certificate naming dnsNames and ips from a CA of its own (written to
// caFile, for --upstream-ca), or cleartext without names.
type evasionOrigin struct {
	addr   netip.AddrPort
	caFile string
}

func startEvasionOrigin(t *testing.T, addr netip.Addr, dnsNames []string, ips []net.IP) *evasionOrigin {
	t.Helper()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "origin %s host=%s", r.URL.Path, r.Host)
	})
	ln := must(net.Listen("tcp", netip.AddrPortFrom(addr, 0).String()))(t)
	o := &evasionOrigin{addr: ln.Addr().(*net.TCPAddr).AddrPort()}
	if dnsNames != nil || ips != nil {
		ca := must(certs.Generate("evasion origin CA"))(t)
		leaf := must(must(certs.NewMinter(ca, certs.MinterOptions{}))(t).LeafFor(dnsNames, ips))(t)
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}})
		o.caFile = filepath.Join(t.TempDir(), "origin-ca.pem")
		if err := os.WriteFile(o.caFile, ca.TrustPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := &http.Server{Handler: handler, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return o
}

// evasionRig starts an appliance with policy pol that trusts o's CA.
func evasionRig(t *testing.T, o *evasionOrigin, pol string) *rig {
	cfg := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	if err := os.WriteFile(cfg, []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	return newRig(t, func(opts *Options) {
		opts.Config = cfg
		if o.caFile != "" {
			opts.UpstreamCA = []string{o.caFile}
		}
	}, nil)
}

// TestEvasionInterceptNoSNI: a client that dials an address and sends no
// SNI gets a leaf only when the destination's certificate proves that
// address, and then a leaf for it alone.
func TestEvasionInterceptNoSNI(t *testing.T) {
	addr := newTestNet().server(3)
	t.Run("certificate for another name", func(t *testing.T) {
		o := startEvasionOrigin(t, addr, []string{"some.other.example"}, nil)
		r := evasionRig(t, o, "policy:\n  default: bump\n")
		_, err := r.tlsDial(t, o.addr, &tls.Config{ServerName: o.addr.Addr().String(), RootCAs: r.caPool()})
		if err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("handshake: %v, want a bad_certificate alert", err)
		}
		recs := r.records(func(rs []records.Record) bool { return findRecord(rs, "tls", o.addr) != nil })
		if rec := findRecord(recs, "tls", o.addr); rec.Action != "deny" || rec.UpstreamVerify != "failed" ||
			!strings.Contains(rec.Error, o.addr.Addr().String()) {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("certificate for the address", func(t *testing.T) {
		o := startEvasionOrigin(t, addr, []string{"some.other.example"}, []net.IP{addr.AsSlice()})
		r := evasionRig(t, o, "policy:\n  default: bump\n")
		tc, err := r.tlsDial(t, o.addr, &tls.Config{ServerName: o.addr.Addr().String(), RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer tc.Close()
		leaf := tc.ConnectionState().PeerCertificates[0]
		if len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(addr.AsSlice()) {
			t.Errorf("leaf for %q and %v, want %s only", leaf.DNSNames, leaf.IPAddresses, addr)
		}
	})
}

// TestEvasionInterceptDestinationCheck: a request allowed by its Host goes
// where that Host resolves, or nowhere: in cleartext, and inside a bumped
// connection for a name its verified certificate does not cover (domain
// fronting), the appliance's resolver decides; the bumped connection's own
// name is checked before its upstream handshake.
func TestEvasionInterceptDestinationCheck(t *testing.T) {
	const pol = `
policy:
  default: deny
  rules:
    - name: named
      domains: ["www.example.test", "api.example.test"]
      action: bump
`
	tn := newTestNet()
	elsewhere := tn.server(9) // where the names resolve instead
	t.Run("cleartext", func(t *testing.T) {
		o := startEvasionOrigin(t, tn.server(3), nil, nil)
		r := evasionRig(t, o, pol)
		r.dns.Set("www.example.test", 60, elsewhere)
		r.dns.Set("api.example.test", 60, o.addr.Addr())
		c := r.httpClient(t, o.addr, false)
		for _, tc := range []struct {
			host, check string
			status      int
		}{{"www.example.test", "mismatch", 403}, {"api.example.test", "ok", 200}} {
			resp := must(c.Get("http://" + tc.host + "/x"))(t)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("%s: status %d, want %d", tc.host, resp.StatusCode, tc.status)
			}
			recs := r.records(func(rs []records.Record) bool { return evasionHTTPRecord(rs, tc.host) != nil })
			if rec := evasionHTTPRecord(recs, tc.host); rec.DestCheck != tc.check || rec.Status != tc.status {
				t.Errorf("%s: record %+v", tc.host, rec)
			}
		}
	})
	t.Run("domain fronting", func(t *testing.T) {
		o := startEvasionOrigin(t, tn.server(4), []string{"www.example.test"}, nil)
		r := evasionRig(t, o, pol)
		// The SNI's name is checked before the appliance's ClientHello
		// carries it out (intercept/bumpcheck.go); requests for it are then
		// proven by the certificate. The fronted name is not covered by it.
		r.dns.Set("www.example.test", 60, o.addr.Addr())
		r.dns.Set("api.example.test", 60, elsewhere)
		tc, err := r.tlsDial(t, o.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer tc.Close()
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(tc)
		for _, x := range []struct {
			host   string
			status int
		}{{"www.example.test", 200}, {"api.example.test", 403}} {
			fmt.Fprintf(tc, "GET /f HTTP/1.1\r\nHost: %s\r\n\r\n", x.host)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s: %v", x.host, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != x.status {
				t.Errorf("%s: status %d, want %d", x.host, resp.StatusCode, x.status)
			}
		}
		recs := r.records(func(rs []records.Record) bool { return evasionHTTPRecord(rs, "api.example.test") != nil })
		if rec := evasionHTTPRecord(recs, "www.example.test"); rec == nil || rec.DestCheck != "" || rec.Action != "bump" {
			t.Errorf("request for the SNI: %+v", rec)
		}
		if rec := evasionHTTPRecord(recs, "api.example.test"); rec.DestCheck != "mismatch" || rec.Action != "deny" {
			t.Errorf("fronted request: %+v", rec)
		}
	})
}

// evasionHTTPRecord returns the http record for host, or nil.
func evasionHTTPRecord(recs []records.Record, host string) *records.Record {
	for i := range recs {
		if recs[i].Kind == "http" && recs[i].Host == host {
			return &recs[i]
		}
	}
	return nil
}

// TestEvasionInterceptH2HeaderList: over the data path's real TCP, an
// HTTP/2 request with about 1 MB of headers gets its 431 (the appliance
// reads on while it answers, so the client is not cut off mid-write) and a
// deny record; a request under the limit goes through.
func TestEvasionInterceptH2HeaderList(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	for _, tc := range []struct {
		size, status int
	}{{60 << 10, 200}, {1_000_000, http.StatusRequestHeaderFieldsTooLarge}} {
		c := r.httpClient(t, up.addr, true)
		req := must(http.NewRequest("GET", "https://www.example.test/hello", nil))(t)
		req.Header.Set("X-Big", strings.Repeat("a", tc.size))
		resp := must(c.Do(req))(t)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.ProtoMajor != 2 {
			t.Errorf("%d bytes of headers: %s %d, want HTTP/2 %d", tc.size, resp.Proto, resp.StatusCode, tc.status)
		}
	}
	recs := r.records(func(rs []records.Record) bool {
		for _, rec := range rs {
			if rec.Status == http.StatusRequestHeaderFieldsTooLarge {
				return true
			}
		}
		return false
	})
	for _, rec := range recs {
		if rec.Status == http.StatusRequestHeaderFieldsTooLarge && (rec.Action != "deny" || !strings.HasPrefix(rec.Error, "request header list larger than")) {
			t.Errorf("record %+v", rec)
		}
	}
}
