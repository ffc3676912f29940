package intercept_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// These tests are written as a client trying to get past the interceptor
// would: each one failed before the fix it tests.

// loopbackOrigin serves HTTPS with cert on a loopback listener of its own,
// as a real destination would, and returns the interceptor's connection to
// it and its address: the flow's destination.
func (r *rig) loopbackOrigin(cert *tls.Certificate) (net.Conn, netip.AddrPort, *upstream) {
	r.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	u := &upstream{closed: make(chan struct{})}
	srv := &http.Server{
		Handler:   u,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}},
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				u.once.Do(func() { close(u.closed) })
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.ServeTLS(ln, "", "")
	r.t.Cleanup(func() { srv.Close() })
	upEnd, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { upEnd.Close() })
	return upEnd, netip.MustParseAddrPort(ln.Addr().String()), u
}

// ipClient handshakes as a client that dialled https://<dest address>:
// crypto/tls sends no SNI for an address and checks the leaf's IP SANs.
func ipClient(r *rig, c net.Conn, dest netip.AddrPort) (*tls.Conn, error) {
	tc := tls.Client(c, &tls.Config{ServerName: dest.Addr().String(), RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(waitLimit))
	return tc, tc.Handshake()
}

// TestEvasionNoSNIForeignCertificate: a destination presenting a publicly
// trusted certificate for another name must not get a client that dialled
// its address a leaf valid for that address. Before, the chain alone was
// verified and the leaf carried the certificate's names plus the address.
func TestEvasionNoSNIForeignCertificate(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, dest, up := r.loopbackOrigin(r.upLeaf("some.other.example"))
	c, sv := r.connectTCP(upEnd, dest)
	if _, err := ipClient(r, c, dest); err == nil || !strings.Contains(err.Error(), "remote error: tls: bad certificate") {
		t.Fatalf("client handshake: %v, want a bad_certificate alert", err)
	}
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	if got := up.requests(); len(got) != 0 {
		t.Errorf("the origin served %q", got)
	}
	recs := r.records()
	if len(recs) != 1 {
		t.Fatalf("records %+v, want one", recs)
	}
	rec := recs[0]
	if rec.Kind != "tls" || rec.Action != "deny" || rec.Result != "denied" || rec.UpstreamVerify != "failed" || rec.SNI != "" ||
		!strings.HasPrefix(rec.Error, "upstream certificate: x509: ") || !strings.Contains(rec.Error, "127.0.0.1") {
		t.Errorf("record %+v, want a deny saying the certificate is not valid for 127.0.0.1", rec)
	}
	if n := r.ic.Denied(); n != 1 {
		t.Errorf("Denied() = %d, want 1", n)
	}
}

// TestEvasionNoSNIAddressCertificate: a destination whose certificate has
// the address as an IP SAN proves it: the client gets a leaf for that
// address, and nothing else the certificate names.
func TestEvasionNoSNIAddressCertificate(t *testing.T) {
	r := newRig(t, testPolicy)
	cert, err := r.upMint.LeafFor([]string{"some.other.example"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	upEnd, dest, up := r.loopbackOrigin(cert)
	c, sv := r.connectTCP(upEnd, dest)
	tc, err := ipClient(r, c, dest)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	leaf := tc.ConnectionState().PeerCertificates[0]
	if len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("leaf for DNS %q and IP %v, want 127.0.0.1 only", leaf.DNSNames, leaf.IPAddresses)
	}
	resp, body := newHTTPClient(t, tc).do("GET /by-address HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	if resp.StatusCode != 200 || body != "upstream: GET 127.0.0.1 /by-address HTTP/1.1" {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	tc.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	if tr := ofKind(r.records(), "tls"); len(tr) != 1 || tr[0].Action != "bump" || tr[0].UpstreamVerify != "ok" || tr[0].Error != "" {
		t.Errorf("tls records %+v", tr)
	}
}

// TestEvasionNoSNIUnverifiedAllowed: a rule that accepts an unverified
// upstream bumps the connection anyway, but the leaf still claims only
// what the client asked for, the address: never the names of a
// certificate that proved nothing.
func TestEvasionNoSNIUnverifiedAllowed(t *testing.T) {
	r := newRig(t, `
policy:
  default: bump
  rules:
    - name: lab
      dest_cidrs: ["127.0.0.1/32"]
      action: bump
      allow_unverified_upstream: true
`)
	upEnd, dest, up := r.loopbackOrigin(r.upLeaf("some.other.example"))
	c, sv := r.connectTCP(upEnd, dest)
	tc, err := ipClient(r, c, dest)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	leaf := tc.ConnectionState().PeerCertificates[0]
	if len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("leaf for DNS %q and IP %v, want 127.0.0.1 only", leaf.DNSNames, leaf.IPAddresses)
	}
	if resp, body := newHTTPClient(t, tc).do("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	tc.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	tr := ofKind(r.records(), "tls")
	if len(tr) != 1 || tr[0].Action != "bump" || tr[0].Rule != "lab" || tr[0].UpstreamVerify != "failed" ||
		!strings.HasPrefix(tr[0].Error, "upstream certificate accepted by rule: x509: ") {
		t.Errorf("tls records %+v", tr)
	}
}

// TestEvasionAbsoluteForm: a request whose absolute-form target and Host
// header disagree is decided, recorded and forwarded on one name, the
// target's (RFC 9112 §3.2.2, as net/http reads it): before, a denied first
// request was recorded under its Host header, a name it never went to.
func TestEvasionAbsoluteForm(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			var (
				c      net.Conn
				sv     *served
				up     *upstream
				scheme = "http"
			)
			if bumped {
				var upEnd net.Conn
				upEnd, up = r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
				var raw net.Conn
				raw, sv = r.connect(upEnd, tlsDest)
				c, scheme = bumpClient(t, r, raw, "www.example.test", "http/1.1"), "https"
			} else {
				var upEnd net.Conn
				upEnd, up = r.startUpstream(nil)
				c, sv = r.connect(upEnd, httpDest)
			}
			hc := newHTTPClient(t, c)
			// Allowed by its target, whatever its Host header says: the
			// destination gets the target's name as Host.
			resp, body := hc.do("GET " + scheme + "://www.example.test/ok HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
			if resp.StatusCode != 200 || body != "upstream: GET www.example.test /ok HTTP/1.1" {
				t.Fatalf("allowed target: %d %q", resp.StatusCode, body)
			}
			// Denied by its target, with an allowed name in Host.
			resp, body = hc.do("GET " + scheme + "://evil.example.test/bad HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "evil.example.test") {
				t.Fatalf("denied target: %d %q", resp.StatusCode, body)
			}
			c.Close()
			sv.waitDoneOnce(t)
			if got := up.requests(); len(got) != 1 {
				t.Errorf("the upstream served %q", got)
			}
			hr := ofKind(r.records(), "http")
			if len(hr) != 2 {
				t.Fatalf("http records %+v", hr)
			}
			if rec := hr[0]; rec.Host != "www.example.test" || rec.Path != "/ok" || rec.Status != 200 || rec.Result != "ok" {
				t.Errorf("allowed record %+v", rec)
			}
			if rec := hr[1]; rec.Host != "evil.example.test" || rec.Path != "/bad" || rec.Status != 403 || rec.Rule != "no-evil" || rec.Action != "deny" {
				t.Errorf("denied record %+v", rec)
			}
		})
	}
	// The first request of a cleartext connection is decided before
	// goproxy reads it: the same name must be recorded there too.
	t.Run("cleartext first request denied", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, up := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		resp, body := hc.do("GET http://evil.example.test:80/bad HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "evil.example.test") {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		sv.waitDoneOnce(t)
		if got := up.requests(); len(got) != 0 {
			t.Errorf("the upstream served %q", got)
		}
		recs := r.records()
		if len(recs) != 1 || recs[0].Host != "evil.example.test:80" || recs[0].Rule != "no-evil" || recs[0].Action != "deny" ||
			recs[0].Path != "/bad" {
			t.Errorf("records %+v", recs)
		}
	})
}

// h2Conn opens an HTTP/2 client connection over a bumped connection to an
// upstream that speaks h2, or over cleartext (prior knowledge).
func h2Conn(t *testing.T, r *rig, bumped bool) (*http2.ClientConn, *served, *upstream, string) {
	t.Helper()
	if !bumped {
		upEnd, up := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		c.SetDeadline(time.Now().Add(waitLimit))
		cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
		if err != nil {
			t.Fatal(err)
		}
		return cc, sv, up, "http"
	}
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "h2")
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	return cc, sv, up, "https"
}

// TestEvasionH2HeaderList: an HTTP/2 request with about 1 MB of headers
// (under the 1 MiB goproxy's HTTP/2 server allows, so a well-behaved client
// sends it) gets a 431, a deny record, and reaches nothing: the HTTP/1 head
// limit applies to HTTP/2 header lists too. Before, it was forwarded.
func TestEvasionH2HeaderList(t *testing.T) {
	for _, bumped := range []bool{true, false} {
		t.Run(map[bool]string{false: "h2c", true: "bumped"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			cc, sv, up, scheme := h2Conn(t, r, bumped)
			req, _ := http.NewRequest("GET", scheme+"://www.example.test/big", nil)
			req.Header.Set("X-Big", strings.Repeat("a", 1_000_000))
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatalf("round trip: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("status %d, want 431", resp.StatusCode)
			}
			cc.Close()
			sv.waitDoneOnce(t)
			if got := up.requests(); len(got) != 0 {
				t.Errorf("the upstream served %q", got)
			}
			hr := ofKind(r.records(), "http")
			if len(hr) != 1 {
				t.Fatalf("http records %+v, want one", hr)
			}
			if rec := hr[0]; rec.Status != 431 || rec.Action != "deny" || rec.Result != "denied" || rec.Scheme != scheme ||
				rec.Error != listTooLarge {
				t.Errorf("record %+v", rec)
			}
			if n := r.ic.Denied(); n != 1 {
				t.Errorf("Denied() = %d, want 1", n)
			}
		})
	}
}

// TestEvasionH2HPACKBomb: a client that ignores the limits writes its own
// frames. It indexes one 3 KB header, then names it a hundred times with a
// byte each: 300 KB of headers in a 3.5 KB frame. The list is measured
// decoded, so this gets a 431 and a GOAWAY, and is recorded. Before, it
// was forwarded upstream.
func TestEvasionH2HPACKBomb(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "h2")
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "www.example.test"}, {":path", "/bomb"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	bomb := hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 3000)}
	for range 100 {
		enc.WriteField(bomb) // a literal the first time, then an index
	}
	if block.Len() > 4000 {
		t.Fatalf("the block is %d bytes: the encoder did not index", block.Len())
	}
	// The frames go on the side: the interceptor stops reading them.
	wrote := make(chan error, 1)
	go func() {
		fr := http2.NewFramer(tc, nil)
		_, err := io.WriteString(tc, http2.ClientPreface)
		if err == nil {
			err = fr.WriteSettings()
		}
		if err == nil {
			err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true})
		}
		wrote <- err
	}()
	fr := http2.NewFramer(nil, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var status string
	var goAway *http2.GoAwayFrame
	for goAway == nil {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the interceptor's frames: %v (status %q, no GOAWAY)", err, status)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				status = f.PseudoValue("status")
			}
		case *http2.GoAwayFrame:
			goAway = f
		}
	}
	if status != "431" || goAway.ErrCode != http2.ErrCodeEnhanceYourCalm || goAway.LastStreamID != 1 {
		t.Errorf("status %q, GOAWAY %v last stream %d", status, goAway.ErrCode, goAway.LastStreamID)
	}
	// Read on to the end: a pipe has no buffer, and the interceptor's TLS
	// close_notify waits for a reader.
	if _, err := io.Copy(io.Discard, tc); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("after the GOAWAY: %v", err)
	}
	<-wrote
	tc.Close()
	sv.waitDoneOnce(t)
	if got := up.requests(); len(got) != 0 {
		t.Errorf("the upstream served %q", got)
	}
	hr := ofKind(r.records(), "http")
	if len(hr) != 1 || hr[0].Status != 431 || hr[0].Action != "deny" || !strings.HasPrefix(hr[0].Error, "request header list larger than") {
		t.Errorf("http records %+v", hr)
	}
}

// TestH2HeadersUnderTheLimit: the header list limit follows a long
// connection whose client indexes and re-uses headers (its HPACK state
// must stay the server's), and lets a large list under the limit through.
func TestH2HeadersUnderTheLimit(t *testing.T) {
	for _, bumped := range []bool{true, false} {
		t.Run(map[bool]string{false: "h2c", true: "bumped"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			cc, sv, up, scheme := h2Conn(t, r, bumped)
			cookie := strings.Repeat("c", 2000)
			for i := range 30 {
				req, _ := http.NewRequest("GET", fmt.Sprintf("%s://www.example.test/n%d", scheme, i), nil)
				req.Header.Set("Cookie", cookie)
				req.Header.Set("X-N", fmt.Sprint(i%3))
				if i == 29 {
					req.Header.Set("X-Large", strings.Repeat("l", 60<<10)) // under 64 KiB
				}
				resp, err := cc.RoundTrip(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("request %d: status %d", i, resp.StatusCode)
				}
			}
			cc.Close()
			sv.waitDoneOnce(t)
			if n := len(up.requests()); n != 30 {
				t.Errorf("the upstream served %d requests, want 30", n)
			}
		})
	}
}

// destCheck is a DestinationCheck that answers from a table and remembers
// what it was asked.
type destCheck struct {
	mu    sync.Mutex
	calls []string // "endpoint name dest"
	bad   map[string]bool
	block bool // wait for the context instead of answering
}

func (d *destCheck) check(ctx context.Context, endpoint, name string, dest netip.Addr) error {
	d.mu.Lock()
	d.calls = append(d.calls, endpoint+" "+name+" "+dest.String())
	bad := d.bad[name]
	d.mu.Unlock()
	if d.block {
		<-ctx.Done()
		return ctx.Err()
	}
	if bad {
		return errors.New(name + " resolves to 203.0.113.9")
	}
	return nil
}

func (d *destCheck) called() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

// namedPolicy lets through only two names, by a rule with domains: what it
// lets through rests on names the client chose.
const namedPolicy = `
policy:
  %s
  default: deny
  rules:
    - name: named
      domains: ["www.example.test", "api.example.test"]
      action: bump
    - name: by-address
      dest_cidrs: ["192.0.2.99/32"]
      action: bump
`

// TestEvasionDestinationCheckHTTP: a cleartext request allowed by its Host
// goes on only if the destination is an address that Host resolves to.
// Before, any Host was believed, so a client could reach any address by
// naming an allowed host.
func TestEvasionDestinationCheckHTTP(t *testing.T) {
	for _, tc := range []struct {
		name, settings string
		bad            bool
		status         int
		action, check  string
		calls          int
	}{
		{"mismatch enforced", "mode: enforce", true, 403, "deny", "mismatch", 1},
		{"mismatch audited", "mode: audit", true, 200, "allow", "mismatch", 1},
		{"match", "mode: enforce", false, 200, "allow", "ok", 1},
		{"check off", "destination_check: off", true, 200, "allow", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc := &destCheck{bad: map[string]bool{"www.example.test": tc.bad}}
			r := newRig(t, fmt.Sprintf(namedPolicy, tc.settings), func(c *intercept.Config) { c.DestinationCheck = dc.check })
			upEnd, up := r.startUpstream(nil)
			c, sv := r.connect(upEnd, httpDest)
			hc := newHTTPClient(t, c)
			resp, body := hc.do("GET /x HTTP/1.1\r\nHost: www.example.test:80\r\n\r\n")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tc.status)
			}
			c.Close()
			sv.waitDoneOnce(t)
			if got := dc.called(); len(got) != tc.calls || (tc.calls > 0 && got[0] != testEndpoint+" www.example.test "+httpDest.Addr().String()) {
				t.Errorf("checks %q", got)
			}
			if served := len(up.requests()); served != map[bool]int{true: 1, false: 0}[tc.status == 200] {
				t.Errorf("the upstream served %d requests", served)
			}
			recs := r.records()
			if len(recs) != 1 {
				t.Fatalf("records %+v", recs)
			}
			rec := recs[0]
			if rec.Status != tc.status || rec.Action != tc.action || rec.DestCheck != tc.check || rec.Rule != "named" ||
				(tc.check == "mismatch") != strings.Contains(rec.Error, "resolves to 203.0.113.9") {
				t.Errorf("record %+v", rec)
			}
		})
	}
	// A decision on addresses alone rests on no name: nothing to check.
	t.Run("not by name", func(t *testing.T) {
		dc := &destCheck{bad: map[string]bool{"other.example.test": true}}
		r := newRig(t, fmt.Sprintf(namedPolicy, ""), func(c *intercept.Config) { c.DestinationCheck = dc.check })
		upEnd, _ := r.startUpstream(nil)
		dest := netip.MustParseAddrPort("192.0.2.99:80")
		c, sv := r.connect(upEnd, dest)
		if resp, body := newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: other.example.test\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("status %d %q", resp.StatusCode, body)
		}
		c.Close()
		sv.waitDoneOnce(t)
		if got := dc.called(); len(got) != 0 {
			t.Errorf("checks %q", got)
		}
	})
	// A check that does not answer runs out, and fails.
	t.Run("timeout", func(t *testing.T) {
		dc := &destCheck{block: true}
		r := newRig(t, fmt.Sprintf(namedPolicy, ""), func(c *intercept.Config) {
			c.DestinationCheck, c.DestinationCheckTimeout = dc.check, 100*time.Millisecond
		})
		upEnd, _ := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		start := time.Now()
		resp, _ := newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		if resp.StatusCode != 403 || time.Since(start) > 2*time.Second {
			t.Fatalf("status %d after %v, want 403 after about 100ms", resp.StatusCode, time.Since(start))
		}
		c.Close()
		sv.waitDoneOnce(t)
		if rec := r.records()[0]; rec.DestCheck != "mismatch" || !strings.Contains(rec.Error, context.DeadlineExceeded.Error()) {
			t.Errorf("record %+v", rec)
		}
	})
}

// TestEvasionDomainFronting: inside a bumped connection, a request for a
// name the verified upstream certificate covers needs no lookup (the
// certificate proves it); one for another allowed name (the domain
// fronting shape: an SNI the destination proves, a Host it does not) is
// checked like cleartext. Before, it went through unchecked. (The SNI is
// checked too, before the bump's handshake: bumpcheck_test.go.)
func TestEvasionDomainFronting(t *testing.T) {
	for _, tc := range []struct {
		name     string
		certFor  []string
		apiCheck bool // whether the request for api.example.test is checked
	}{
		{"certificate for the SNI only", []string{"www.example.test"}, true},
		{"certificate for both", []string{"www.example.test", "api.example.test"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc := &destCheck{bad: map[string]bool{"api.example.test": true}}
			r := newRig(t, fmt.Sprintf(namedPolicy, ""), func(c *intercept.Config) { c.DestinationCheck = dc.check })
			cert, err := r.upMint.LeafFor(tc.certFor, nil)
			if err != nil {
				t.Fatal(err)
			}
			upEnd, up := r.startUpstream(cert, "http/1.1")
			// The transport pools connections per name: another name
			// takes another connection to the same destination.
			up2End, up2 := r.startUpstreamTCP(cert, "http/1.1")
			r.offerRedial(up2End)
			raw, sv := r.connect(upEnd, tlsDest)
			hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
			if resp, body := hc.do("GET /sni HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("request for the SNI: %d %q", resp.StatusCode, body)
			}
			wantAPI := map[bool]int{true: 403, false: 200}[tc.apiCheck]
			if resp, body := hc.do("GET /fronted HTTP/1.1\r\nHost: api.example.test\r\n\r\n"); resp.StatusCode != wantAPI {
				t.Fatalf("request for another name: %d %q, want %d", resp.StatusCode, body, wantAPI)
			}
			hc.c.Close()
			sv.waitDoneOnce(t)
			// The SNI's check before the handshake, then the fronted Host's.
			if got, want := len(dc.called()), map[bool]int{true: 2, false: 1}[tc.apiCheck]; got != want {
				t.Errorf("checks %q, want %d", dc.called(), want)
			}
			if served := append(up.requests(), up2.requests()...); len(served) != map[bool]int{true: 1, false: 2}[tc.apiCheck] {
				t.Errorf("the upstream served %q", served)
			}
			hr := ofKind(r.records(), "http")
			if len(hr) != 2 {
				t.Fatalf("http records %+v", hr)
			}
			if hr[0].DestCheck != "" || hr[0].Action != "bump" {
				t.Errorf("record of the request for the SNI %+v", hr[0])
			}
			wantRec := records.Record{Action: "bump", Status: 200}
			if tc.apiCheck {
				wantRec = records.Record{Action: "deny", Status: 403, DestCheck: "mismatch"}
			}
			if rec := hr[1]; rec.Action != wantRec.Action || rec.Status != wantRec.Status || rec.DestCheck != wantRec.DestCheck || rec.Host != "api.example.test" {
				t.Errorf("record of the fronted request %+v", rec)
			}
		})
	}
}
