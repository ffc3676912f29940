package intercept_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// These tests drive Interceptor.Serve the way package proxy does, but with
// no packet stack: the client and the upstream are net.Pipe ends, TLS is
// crypto/tls, and the upstream an http.Server on its end of the pipe.

// bumpClient handshakes with the interceptor as a client that trusts the
// appliance's CA.
func bumpClient(t *testing.T, r *rig, c net.Conn, sni string, protos ...string) *tls.Conn {
	t.Helper()
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: r.caPool(), NextProtos: protos})
	tc.SetDeadline(time.Now().Add(waitLimit))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if issuer := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; issuer != r.ca.Certificate().Subject.CommonName {
		t.Fatalf("leaf issued by %q, not the appliance's CA", issuer)
	}
	return tc
}

// TestBumpHTTP1: a bumped HTTP/1.1 request reaches the upstream over the
// session's own (verified) upstream connection; the request and the
// connection each get their record, and the session ends, once, when the
// client leaves.
func TestBumpHTTP1(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "http/1.1")
	if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("negotiated %q with the client, want http/1.1", p)
	}
	hc := newHTTPClient(t, tc)
	resp, body := hc.do("GET /hello?secret=1 HTTP/1.1\r\nHost: www.example.test\r\nUser-Agent: intercept-test\r\n\r\n")
	if resp.StatusCode != 200 || body != "upstream: GET www.example.test /hello HTTP/1.1" {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	if got := up.requests(); len(got) != 1 {
		t.Fatalf("the upstream served %q", got)
	}
	sv.notDone(t)

	tc.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t) // the session closes its upstream connection as it ends

	recs := r.records()
	if len(recs) != 2 {
		t.Fatalf("%d records, want an http and a tls one: %+v", len(recs), recs)
	}
	hr, tr := ofKind(recs, "http"), ofKind(recs, "tls")
	if len(hr) != 1 || len(tr) != 1 {
		t.Fatalf("records %+v", recs)
	}
	h := hr[0]
	if h.Scheme != "https" || h.Method != "GET" || h.Host != "www.example.test" || h.Path != "/hello" ||
		h.Status != 200 || h.Action != "bump" || h.Rule != "default" || h.Result != "ok" ||
		h.UserAgent != "intercept-test" || h.SNI != "www.example.test" || h.BytesIn != int64(len(body)) ||
		h.ClientIP != testClient.String() || h.DestIP != tlsDest.Addr().String() || h.DestPort != tlsDest.Port() {
		t.Errorf("http record %+v", h)
	}
	if strings.Contains(fmt.Sprintf("%+v", h), "secret") {
		t.Errorf("the http record holds the query string: %+v", h)
	}
	tl := tr[0]
	if tl.Action != "bump" || tl.UpstreamVerify != "ok" || tl.Result != "ok" || tl.Error != "" ||
		tl.SNI != "www.example.test" || tl.ALPN != "http/1.1" || tl.TLSVersion == "" || tl.TLSCipher == "" ||
		tl.BytesIn == 0 || tl.BytesOut == 0 {
		t.Errorf("tls record %+v", tl)
	}
	if n := r.dials.Load(); n != 0 {
		t.Errorf("%d more upstream connections dialled", n)
	}
	if n := r.ic.Denied(); n != 0 {
		t.Errorf("Denied() = %d", n)
	}
}

// TestBumpUpstreamUnverified: an upstream that cannot prove it is the name
// the client asked for gets the client an alert instead of a leaf, and the
// connection a deny record. One whose handshake fails before any
// certificate is seen (no TLS, silence) gets the client an alert too, but
// its record is an error, not a denial: no certificate failed, and the
// policy allowed the bump (before, it said upstream_verify: failed, action
// deny, result denied).
func TestBumpUpstreamUnverified(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cert      func(r *rig) *tls.Certificate // nil: the upstream speaks cleartext HTTP
		silent    bool                          // the upstream reads and says nothing
		alert     string                        // in the client's handshake error
		recordErr string                        // in the record's error
		action    string
		result    string
		verify    string // the record's upstream_verify
	}{
		{"untrusted root", func(r *rig) *tls.Certificate { return r.strangerLeaf("www.example.test") }, false,
			"bad certificate", "upstream certificate: x509: certificate signed by unknown authority", "deny", "denied", "failed"},
		{"wrong name", func(r *rig) *tls.Certificate { return r.upLeaf("other.example.test") }, false,
			"bad certificate", "upstream certificate: x509: certificate is valid for other.example.test, not www.example.test", "deny", "denied", "failed"},
		{"no TLS", func(*rig) *tls.Certificate { return nil }, false,
			"handshake failure", "upstream TLS handshake: tls: first record does not look like a TLS handshake", "bump", "error", ""},
		{"silent", func(*rig) *tls.Certificate { return nil }, true,
			"handshake failure", "upstream TLS handshake: context deadline exceeded", "bump", "timeout", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			var upEnd net.Conn
			var up *upstream
			if tc.silent {
				var far net.Conn
				upEnd, far = net.Pipe()
				go io.Copy(io.Discard, far)
				t.Cleanup(func() { far.Close() })
			} else {
				upEnd, up = r.startUpstream(tc.cert(r), "http/1.1")
			}
			c, sv := r.connect(upEnd, tlsDest)
			client := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool()})
			client.SetDeadline(time.Now().Add(waitLimit))
			err := client.Handshake()
			if err == nil || !strings.Contains(err.Error(), "remote error: tls: "+tc.alert) {
				t.Fatalf("client handshake: %v, want a %s alert", err, tc.alert)
			}
			sv.waitDoneOnce(t)
			if up != nil {
				up.waitClosed(t)
				if got := up.requests(); len(got) != 0 {
					t.Errorf("the upstream served %q", got)
				}
			}
			recs := r.records()
			if len(recs) != 1 {
				t.Fatalf("records %+v, want one", recs)
			}
			rec := recs[0]
			if rec.Kind != "tls" || rec.Action != tc.action || rec.Result != tc.result || rec.UpstreamVerify != tc.verify ||
				rec.SNI != "www.example.test" || !strings.HasPrefix(rec.Error, tc.recordErr) {
				t.Errorf("record %+v", rec)
			}
			wantDenied := map[bool]uint64{true: 1, false: 0}[tc.action == "deny"]
			if n := r.ic.Denied(); n != wantDenied {
				t.Errorf("Denied() = %d, want %d", n, wantDenied)
			}
		})
	}
}

// TestBumpClientRejectsLeaf: a client that does not trust the appliance's
// CA fails its handshake; the connection's record says so, and nothing is
// sent upstream. Loopback TCP: the client's alert must not wait for the
// interceptor to read the rest of its flight.
func TestBumpClientRejectsLeaf(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
	c, sv := r.connectTCP(upEnd, tlsDest)
	tc := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: x509.NewCertPool()})
	tc.SetDeadline(time.Now().Add(waitLimit))
	if err := tc.Handshake(); err == nil {
		t.Fatal("the handshake succeeded with a client that trusts nothing")
	}
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	if got := up.requests(); len(got) != 0 {
		t.Errorf("the upstream served %q", got)
	}
	recs := r.records()
	if len(recs) != 1 {
		t.Fatalf("records %+v, want one", recs)
	}
	if rec := recs[0]; rec.Kind != "tls" || rec.Result != "error" || !strings.HasPrefix(rec.Error, "client TLS handshake: ") ||
		rec.UpstreamVerify != "ok" || rec.SNI != "www.example.test" {
		t.Errorf("record %+v", rec)
	}
}

// TestBumpWithoutCA: TLS handed over for bumping to an interceptor that has
// no CA is refused with an alert and a deny record, never relayed.
func TestBumpWithoutCA(t *testing.T) {
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Minter = nil })
	if r.ic.CanBump() {
		t.Fatal("CanBump without a minter")
	}
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	client := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool()})
	client.SetDeadline(time.Now().Add(waitLimit))
	if err := client.Handshake(); err == nil || !strings.Contains(err.Error(), "remote error: tls: internal error") {
		t.Fatalf("client handshake: %v, want an internal-error alert", err)
	}
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	recs := r.records()
	if len(recs) != 1 {
		t.Fatalf("records %+v, want one", recs)
	}
	if rec := recs[0]; rec.Kind != "tls" || rec.Action != "deny" || rec.Result != "denied" || rec.SNI != "www.example.test" ||
		!strings.Contains(rec.Error, "no CA") {
		t.Errorf("record %+v", rec)
	}
	if n := r.ic.Denied(); n != 1 {
		t.Errorf("Denied() = %d, want 1", n)
	}
}

// TestBumpWithoutSNI: a client that sends no SNI (it dialled an address)
// gets a leaf for that address alone, once the upstream's certificate has
// proved it: the certificate's chain and its IP SANs are verified, and its
// DNS names are not passed on.
func TestBumpWithoutSNI(t *testing.T) {
	r := newRig(t, testPolicy)
	upCert, err := r.upMint.LeafFor([]string{"www.example.test"}, []net.IP{tlsDest.Addr().AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	upEnd, up := r.startUpstream(upCert, "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	// An address as ServerName: crypto/tls sends no SNI and checks IP SANs.
	tc := tls.Client(c, &tls.Config{ServerName: tlsDest.Addr().String(), RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(waitLimit))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	leaf := tc.ConnectionState().PeerCertificates[0]
	if len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(tlsDest.Addr().AsSlice()) {
		t.Errorf("the leaf for a client without SNI names %q and %v, want only %s", leaf.DNSNames, leaf.IPAddresses, tlsDest.Addr())
	}
	resp, body := newHTTPClient(t, tc).do("GET /nosni HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	if resp.StatusCode != 200 || body != "upstream: GET www.example.test /nosni HTTP/1.1" {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	tc.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	tr := ofKind(r.records(), "tls")
	if len(tr) != 1 || tr[0].SNI != "" || tr[0].UpstreamVerify != "ok" || tr[0].Action != "bump" {
		t.Errorf("tls records %+v", tr)
	}
}

// TestBumpHTTP2: a client offering h2 gets it when the upstream speaks it,
// and the request goes over HTTP/2 on both sides; when the upstream speaks
// HTTP/1.1 only, the client is offered HTTP/1.1 only.
func TestBumpHTTP2(t *testing.T) {
	t.Run("upstream h2", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
		c, sv := r.connect(upEnd, tlsDest)
		tc := bumpClient(t, r, c, "www.example.test", "h2", "http/1.1")
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("negotiated %q with the client, want h2", p)
		}
		cc, err := (&http2.Transport{}).NewClientConn(tc)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", "https://www.example.test/two", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" || string(body) != "upstream: GET www.example.test /two HTTP/2.0" {
			t.Fatalf("response %d %s %q", resp.StatusCode, resp.Proto, body)
		}
		sv.notDone(t)
		cc.Close()
		sv.waitDoneOnce(t)
		up.waitClosed(t)

		recs := r.records()
		hr, tr := ofKind(recs, "http"), ofKind(recs, "tls")
		if len(recs) != 2 || len(hr) != 1 || len(tr) != 1 {
			t.Fatalf("records %+v", recs)
		}
		if h := hr[0]; h.Scheme != "https" || h.Method != "GET" || h.Host != "www.example.test" || h.Path != "/two" ||
			h.Status != 200 || h.Action != "bump" || h.ALPN != "h2" || h.Result != "ok" {
			t.Errorf("http record %+v", h)
		}
		if tl := tr[0]; tl.Action != "bump" || tl.UpstreamVerify != "ok" || tl.ALPN != "h2" || tl.Result != "ok" {
			t.Errorf("tls record %+v", tl)
		}
		if n := r.dials.Load(); n != 0 {
			t.Errorf("%d more upstream connections dialled", n)
		}
	})
	t.Run("upstream http/1.1", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
		c, sv := r.connect(upEnd, tlsDest)
		tc := bumpClient(t, r, c, "www.example.test", "h2", "http/1.1")
		if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
			t.Fatalf("negotiated %q with the client, want http/1.1: the upstream does not speak h2", p)
		}
		resp, body := newHTTPClient(t, tc).do("GET /one HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		if resp.StatusCode != 200 || body != "upstream: GET www.example.test /one HTTP/1.1" {
			t.Fatalf("response %d %q", resp.StatusCode, body)
		}
		tc.Close()
		sv.waitDoneOnce(t)
		up.waitClosed(t)
		if tr := ofKind(r.records(), "tls"); len(tr) != 1 || tr[0].ALPN != "http/1.1" {
			t.Errorf("tls records %+v", tr)
		}
	})
}

// TestBumpRedial: a further upstream connection a bumped session needs (the
// first one was closed) goes to the flow's destination, and is verified as
// the first one was: against the SNI and the configured roots. One that
// fails is refused, and so is the request (502), over HTTP/1
// (h1Transport; TestBumpRedialRefusedH2 is HTTP/2): the request's record
// and the tls record say upstream_verify failed. Before, both said ok, the
// first connection's result, and the tls-verify-failed query missed a
// destination whose certificate changed between connections.
func TestBumpRedial(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cert    func(r *rig) *tls.Certificate
		status  int
		recErr  string
		served2 int
	}{
		{"verified", func(r *rig) *tls.Certificate { return r.upLeaf("www.example.test") }, 200, "", 1},
		{"untrusted", func(r *rig) *tls.Certificate { return r.strangerLeaf("www.example.test") }, 502, "certificate signed by unknown authority", 0},
		{"wrong name", func(r *rig) *tls.Certificate { return r.upLeaf("other.example.test") }, 502, "not www.example.test", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			hc, sv, up2 := bumpRedialH1(t, r, r.upLeaf("www.example.test"), tc.cert(r))
			resp, body := hc.do("GET /two HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			if resp.StatusCode != tc.status {
				t.Fatalf("second response %d %q, want %d", resp.StatusCode, body, tc.status)
			}
			hc.c.Close()
			sv.waitDoneOnce(t)
			up2.waitClosed(t)
			if got := up2.requests(); len(got) != tc.served2 {
				t.Errorf("the second upstream connection served %q", got)
			}
			if got := r.dialed(); len(got) != 1 || got[0] != tlsDest.String() {
				t.Errorf("dialled %q, want the flow's destination %s once", got, tlsDest)
			}
			hr := ofKind(r.records(), "http")
			if len(hr) != 2 {
				t.Fatalf("http records %+v", hr)
			}
			verify := map[bool]string{true: "ok", false: "failed"}[tc.status == 200]
			if rec := hr[1]; rec.Path != "/two" || rec.Status != tc.status || !strings.Contains(rec.Error, tc.recErr) ||
				(tc.status == 200) != (rec.Result == "ok") || rec.UpstreamVerify != verify {
				t.Errorf("record %+v, want upstream_verify %s", rec, verify)
			}
			wantRedialRefusedTLSRecord(t, r.records(), tc.status == 200, tc.recErr)
		})
	}
}

// TestCleartextHost: a cleartext request for a denied Host gets a 403 naming
// the rule, and nothing reaches the destination; an allowed one goes to the
// session's upstream connection, whatever its Host names (here a listener
// of its own, which must see nothing).
func TestCleartextHost(t *testing.T) {
	t.Run("denied", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, up := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		resp, body := hc.do("GET /page?q=1 HTTP/1.1\r\nHost: evil.example.test\r\nUser-Agent: intercept-test\r\n\r\n")
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "no-evil") || !strings.Contains(body, "evil.example.test") {
			t.Fatalf("response %d %q, want 403 naming the rule", resp.StatusCode, body)
		}
		hc.wantClosed()
		sv.waitDoneOnce(t)
		up.waitClosed(t)
		if got := up.requests(); len(got) != 0 {
			t.Errorf("the upstream served %q", got)
		}
		recs := r.records()
		if len(recs) != 1 {
			t.Fatalf("records %+v, want one", recs)
		}
		if rec := recs[0]; rec.Kind != "http" || rec.Action != "deny" || rec.Rule != "no-evil" || rec.Status != 403 ||
			rec.Result != "denied" || rec.Scheme != "http" || rec.Method != "GET" || rec.Host != "evil.example.test" ||
			rec.Path != "/page" || rec.DestPort != httpDest.Port() {
			t.Errorf("record %+v", rec)
		}
		if n := r.ic.Denied(); n != 1 {
			t.Errorf("Denied() = %d, want 1", n)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		r := newRig(t, testPolicy)
		decoy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { decoy.Close() })
		var decoyHits atomic.Int32
		go func() {
			for {
				c, err := decoy.Accept()
				if err != nil {
					return
				}
				decoyHits.Add(1)
				c.Close()
			}
		}()
		host := decoy.Addr().String()
		upEnd, up := r.startUpstream(nil)
		up.drop.Store(true) // the second request needs a new upstream connection
		up2End, up2 := r.startUpstream(nil)
		r.offerRedial(up2End)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		resp, body := hc.do("GET /page HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: intercept-test\r\n\r\n")
		if resp.StatusCode != 200 || body != "upstream: GET "+host+" /page HTTP/1.1" {
			t.Fatalf("response %d %q", resp.StatusCode, body)
		}
		up.waitClosed(t)
		resp, body2 := hc.do("GET /again HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
		if resp.StatusCode != 200 || body2 != "upstream: GET "+host+" /again HTTP/1.1" {
			t.Fatalf("second response %d %q", resp.StatusCode, body2)
		}
		sv.notDone(t)
		c.Close()
		sv.waitDoneOnce(t)
		up2.waitClosed(t)
		if got := up.requests(); len(got) != 1 || !strings.Contains(got[0], "/page") {
			t.Errorf("the session's upstream connection served %q", got)
		}
		if got := up2.requests(); len(got) != 1 || !strings.Contains(got[0], "/again") {
			t.Errorf("the second upstream connection served %q", got)
		}
		if n := decoyHits.Load(); n != 0 {
			t.Errorf("the host the Host header names got %d connections", n)
		}
		if got := r.dialed(); len(got) != 1 || got[0] != httpDest.String() {
			t.Errorf("dialled %q, want the flow's destination %s once", got, httpDest)
		}
		recs := r.records()
		if len(recs) != 2 {
			t.Fatalf("records %+v, want two", recs)
		}
		for i, want := range []struct {
			path string
			n    int
		}{{"/page", len(body)}, {"/again", len(body2)}} {
			if rec := recs[i]; rec.Kind != "http" || rec.Action != "allow" || rec.Rule != "default" || rec.Status != 200 ||
				rec.Result != "ok" || rec.Scheme != "http" || rec.Host != host || rec.Path != want.path ||
				rec.BytesIn != int64(want.n) {
				t.Errorf("record %d: %+v", i, rec)
			}
		}
		if recs[0].UserAgent != "intercept-test" {
			t.Errorf("record %+v: no user agent", recs[0])
		}
	})
}

// TestPerRequestDecision: each request on a keep-alive connection is decided
// on its own Host: a denied one in the middle gets a 403 and a record of its
// own, and the connection carries on. Cleartext, and bumped (where the Host
// differs from the SNI the connection was decided on).
func TestPerRequestDecision(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			var (
				upEnd  net.Conn
				up     *upstream
				c      net.Conn
				sv     *served
				scheme = "http"
				action = "allow"
			)
			if bumped {
				upEnd, up = r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
				var raw net.Conn
				raw, sv = r.connect(upEnd, tlsDest)
				c = bumpClient(t, r, raw, "www.example.test", "http/1.1")
				scheme, action = "https", "bump"
			} else {
				upEnd, up = r.startUpstream(nil)
				c, sv = r.connect(upEnd, httpDest)
			}
			hc := newHTTPClient(t, c)
			if resp, body := hc.do("GET /a HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 || body != "upstream: GET www.example.test /a HTTP/1.1" {
				t.Fatalf("first request: %d %q", resp.StatusCode, body)
			}
			if resp, body := hc.do("GET /b HTTP/1.1\r\nHost: evil.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "no-evil") {
				t.Fatalf("second request, to a denied host: %d %q", resp.StatusCode, body)
			}
			if resp, body := hc.do("GET /c HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 || body != "upstream: GET www.example.test /c HTTP/1.1" {
				t.Fatalf("third request: %d %q", resp.StatusCode, body)
			}
			sv.notDone(t)
			c.Close()
			sv.waitDoneOnce(t)
			up.waitClosed(t)
			if got, want := strings.Join(up.requests(), "; "), "GET www.example.test /a HTTP/1.1; GET www.example.test /c HTTP/1.1"; got != want {
				t.Errorf("the upstream served %q, want %q", got, want)
			}
			recs := ofKind(r.records(), "http")
			if len(recs) != 3 {
				t.Fatalf("http records %+v, want three", recs)
			}
			want := []struct {
				path, host, action, rule, result string
				status                           int
			}{
				{"/a", "www.example.test", action, "default", "ok", 200},
				{"/b", "evil.example.test", "deny", "no-evil", "denied", 403},
				{"/c", "www.example.test", action, "default", "ok", 200},
			}
			for i, w := range want {
				rec := recs[i]
				if rec.Scheme != scheme || rec.Path != w.path || rec.Host != w.host || rec.Action != w.action ||
					rec.Rule != w.rule || rec.Result != w.result || rec.Status != w.status {
					t.Errorf("record %d: %+v, want %+v", i, rec, w)
				}
			}
			if n := r.ic.Denied(); n != 1 {
				t.Errorf("Denied() = %d, want 1", n)
			}
			if n := r.dials.Load(); n != 0 {
				t.Errorf("%d more upstream connections dialled", n)
			}
		})
	}
}

// tlsScopedDeny bumps www and denies evil over TLS only; everything else
// is allowed by the default (which, for TLS, reads as splice).
const tlsScopedDeny = `
policy:
  default: allow
  rules:
    - name: bump-www
      domains: ["www.example.test"]
      protocols: [tls]
      action: bump
    - name: no-tls-evil
      domains: ["evil.example.test"]
      protocols: [tls]
      action: deny
`

// TestBumpedRequestDecidedAsTLS: a request inside a bumped connection is
// decided as protocol tls, as the connection was. Were it decided as http,
// a client could open a bumped connection with an SNI that is allowed and
// send "Host: evil" to get past a deny rule scoped to protocols [tls]
// (domain fronting). A request let through is recorded as bump, whatever
// rule let it through: the default's allow reads as splice for TLS, and
// a record saying splice would contradict the decryption that happened.
// In cleartext the same Host is not under the tls-only rule.
func TestBumpedRequestDecidedAsTLS(t *testing.T) {
	r := newRig(t, tlsScopedDeny)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
	raw, sv := r.connect(upEnd, tlsDest)
	c := bumpClient(t, r, raw, "www.example.test", "http/1.1")
	hc := newHTTPClient(t, c)
	if resp, body := hc.do("GET /a HTTP/1.1\r\nHost: evil.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "no-tls-evil") {
		t.Errorf("Host evil.example.test in a bumped connection: %d %q, want 403 by no-tls-evil", resp.StatusCode, body)
	}
	if resp, _ := hc.do("GET /b HTTP/1.1\r\nHost: other.example.test\r\n\r\n"); resp.StatusCode != http.StatusOK {
		t.Errorf("Host other.example.test in a bumped connection: %d, want 200 by the default", resp.StatusCode)
	}
	c.Close()
	sv.waitDoneOnce(t)
	if got := strings.Join(up.requests(), "; "); got != "GET other.example.test /b HTTP/1.1" {
		t.Errorf("the upstream served %q, want only /b", got)
	}
	want := map[string]string{"/a": "deny no-tls-evil", "/b": "bump default"}
	for _, rec := range ofKind(r.records(), "http") {
		if got := rec.Action + " " + rec.Rule; got != want[rec.Path] {
			t.Errorf("record of %s: %q, want %q", rec.Path, got, want[rec.Path])
		}
		delete(want, rec.Path)
	}
	if len(want) != 0 {
		t.Errorf("no http record of %v; records %+v", want, r.records())
	}

	t.Run("cleartext", func(t *testing.T) {
		r := newRig(t, tlsScopedDeny)
		upEnd, _ := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		if resp, _ := hc.do("GET /a HTTP/1.1\r\nHost: evil.example.test\r\n\r\n"); resp.StatusCode != http.StatusOK {
			t.Errorf("Host evil.example.test in cleartext: %d, want 200: the deny is for tls only", resp.StatusCode)
		}
		c.Close()
		sv.waitDoneOnce(t)
	})
}

// TestH2C: a cleartext HTTP/2 client (prior knowledge) has each request
// decided and recorded like an HTTP/1 one; the upstream gets HTTP/1.1 on
// the session's connection.
func TestH2C(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(nil)
	cc, sv := r.h2cClient(t, upEnd)
	get := func(url string) (*http.Response, string) { t.Helper(); return h2cGet(t, cc, url) }
	if resp, body := get("http://www.example.test/a"); resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" || body != "upstream: GET www.example.test /a HTTP/1.1" {
		t.Fatalf("allowed: %d %s %q", resp.StatusCode, resp.Proto, body)
	}
	// The 403 alone: an HTTP/2 stream gets no page (the record names the
	// rule).
	if resp, body := get("http://evil.example.test/b"); resp.StatusCode != 403 || body != "" {
		t.Fatalf("denied: %d %q", resp.StatusCode, body)
	}
	sv.notDone(t)
	cc.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	if got := up.requests(); len(got) != 1 {
		t.Errorf("the upstream served %q", got)
	}
	recs := r.records()
	if len(recs) != 2 {
		t.Fatalf("records %+v, want two", recs)
	}
	if rec := recs[0]; rec.Kind != "http" || rec.Scheme != "http" || rec.Host != "www.example.test" || rec.Path != "/a" ||
		rec.Action != "allow" || rec.Status != 200 {
		t.Errorf("record %+v", rec)
	}
	if rec := recs[1]; rec.Kind != "http" || rec.Host != "evil.example.test" || rec.Path != "/b" ||
		rec.Action != "deny" || rec.Rule != "no-evil" || rec.Status != 403 {
		t.Errorf("record %+v", rec)
	}
}

// TestCleartextHalfClose: a client that half-closes after its request still
// gets the whole response, then the connection ends. Loopback TCP: a pipe
// cannot half-close.
func TestCleartextHalfClose(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(nil)
	c, sv := r.connectTCP(upEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	if _, err := io.WriteString(c, "GET /half HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to the end: %v", err)
	}
	if want := "upstream: GET www.example.test /half HTTP/1.1"; !strings.HasPrefix(string(all), "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(string(all), want) {
		t.Fatalf("got %q", all)
	}
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	recs := r.records()
	if len(recs) != 1 || recs[0].Status != 200 || recs[0].Path != "/half" {
		t.Fatalf("records %+v", recs)
	}
}

// TestRequestHeadTooLarge: a request head over Config.MaxHeaderBytes gets a
// 431, ends the connection and is recorded as denied, whether it is the
// connection's first request or a later one.
func TestRequestHeadTooLarge(t *testing.T) {
	const limit = 2048
	bigHead := "GET /big HTTP/1.1\r\nHost: www.example.test\r\nX-Big: " + strings.Repeat("a", 32<<10) + "\r\n\r\n"
	for _, first := range []bool{true, false} {
		t.Run(map[bool]string{true: "first request", false: "second request"}[first], func(t *testing.T) {
			r := newRig(t, testPolicy, func(c *intercept.Config) { c.MaxHeaderBytes = limit })
			upEnd, up := r.startUpstream(nil)
			c, sv := r.connect(upEnd, httpDest)
			hc := newHTTPClient(t, c)
			want := 1
			if !first {
				// Just under the limit: allowed.
				head := "GET /small HTTP/1.1\r\nHost: www.example.test\r\nX-Pad: " + strings.Repeat("b", limit-200) + "\r\n\r\n"
				if resp, body := hc.do(head); resp.StatusCode != 200 {
					t.Fatalf("a head under the limit: %d %q", resp.StatusCode, body)
				}
				want = 2
			}
			// The interceptor stops reading part way: write on the side.
			wrote := make(chan error, 1)
			go func() { _, err := io.WriteString(c, bigHead); wrote <- err }()
			resp, body := hc.read("the big head")
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(body, "gwlbproxy") {
				t.Fatalf("a %d-byte head: %d %q, want 431", len(bigHead), resp.StatusCode, body)
			}
			hc.wantClosed()
			sv.waitDoneOnce(t)
			up.waitClosed(t)
			select {
			case err := <-wrote:
				if err == nil {
					t.Error("the whole big head was read")
				}
			case <-time.After(waitLimit):
				t.Fatal("the client's write still blocks")
			}
			for _, got := range up.requests() {
				if strings.Contains(got, "/big") {
					t.Errorf("the big head reached the upstream: %q", got)
				}
			}
			recs := r.records()
			if len(recs) != want {
				t.Fatalf("records %+v, want %d", recs, want)
			}
			rec := recs[len(recs)-1]
			if rec.Kind != "http" || rec.Status != http.StatusRequestHeaderFieldsTooLarge || rec.Action != "deny" ||
				rec.Result != "denied" || rec.Error != fmt.Sprintf("request head larger than %d bytes (its bytes and 64 a line)", limit+640) || rec.Scheme != "http" {
				t.Errorf("record %+v", rec)
			}
			if n := r.ic.Denied(); n != 1 {
				t.Errorf("Denied() = %d, want 1", n)
			}
		})
	}
}

// TestTrustHost: the trust host is answered by Config.Trust, even under a
// policy that denies everything, and nothing reaches the destination: over
// cleartext HTTP, and over TLS with a leaf for its name.
func TestTrustHost(t *testing.T) {
	for _, overTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "tls"}[overTLS], func(t *testing.T) {
			var served atomic.Int32
			var r *rig
			r = newRig(t, "policy:\n  default: deny\n", func(c *intercept.Config) {
				c.TrustHost = "gwlbproxy.internal"
				c.Trust = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
					served.Add(1)
					if req.URL.Path != "/ca.pem" {
						http.NotFound(w, req)
						return
					}
					w.Header().Set("Content-Type", "application/x-pem-file")
					w.Write(r.ca.TrustPEM())
				})
			})
			upEnd, up := r.startUpstream(nil)
			dest, scheme := httpDest, "http"
			if overTLS {
				dest, scheme = tlsDest, "https"
			}
			c, sv := r.connect(upEnd, dest)
			if overTLS {
				c = bumpClient(t, r, c, "gwlbproxy.internal", "http/1.1")
				up.waitClosed(t) // no destination is asked to be gwlbproxy.internal
			}
			hc := newHTTPClient(t, c)
			resp, body := hc.do("GET /ca.pem HTTP/1.1\r\nHost: gwlbproxy.internal\r\n\r\n")
			if resp.StatusCode != 200 || body != string(r.ca.TrustPEM()) || resp.Header.Get("Content-Type") != "application/x-pem-file" {
				t.Fatalf("trust page: %d %q", resp.StatusCode, body)
			}
			if n := served.Load(); n != 1 {
				t.Fatalf("the trust handler ran %d times", n)
			}
			sv.notDone(t)
			c.Close()
			sv.waitDoneOnce(t)
			up.waitClosed(t)
			if got := up.requests(); len(got) != 0 {
				t.Errorf("the upstream served %q", got)
			}
			recs := r.records()
			hr := ofKind(recs, "http")
			if len(hr) != 1 {
				t.Fatalf("records %+v, want one http record", recs)
			}
			if rec := hr[0]; rec.Rule != "trust-page" || rec.Action != "allow" || rec.Status != 200 ||
				rec.Result != "ok" || rec.Scheme != scheme || rec.Host != "gwlbproxy.internal" || rec.Path != "/ca.pem" ||
				rec.BytesIn != int64(len(body)) {
				t.Errorf("record %+v", rec)
			}
			if tr := ofKind(recs, "tls"); overTLS != (len(tr) == 1) || len(recs) != len(hr)+len(tr) ||
				(overTLS && (tr[0].Rule != "trust-page" || tr[0].Action != "allow" || tr[0].Result != "ok")) {
				t.Errorf("records %+v", recs)
			}
			if n := r.ic.Denied(); n != 0 {
				t.Errorf("Denied() = %d", n)
			}
			if n := r.dials.Load(); n != 0 {
				t.Errorf("%d upstream connections dialled", n)
			}
		})
	}
}

// TestBumpRedialHandshakeTimeout: Config.HandshakeTimeout "bounds each TLS
// handshake, upstream and client" — including that of a further upstream
// connection a bumped session dials. Here that destination accepts the
// connection and never answers the ClientHello: the request should fail
// with a 502 once the timeout has passed.
func TestBumpRedialHandshakeTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.HandshakeTimeout = timeout })
	upEnd, up := r.startUpstreamTCP(r.upLeaf("www.example.test"), "http/1.1") // TCP: see TestBumpRedial
	up.drop.Store(true)
	silentEnd, silent := testnet.TCPPair(t)
	go io.Copy(io.Discard, silent) // reads the ClientHello, never answers
	r.offerRedial(silentEnd)
	c, sv := r.connect(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "http/1.1")
	hc := newHTTPClient(t, tlsc)
	if resp, body := hc.do("GET /one HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("first response %d %q", resp.StatusCode, body)
	}
	up.waitClosed(t)
	start := time.Now()
	tlsc.SetDeadline(start.Add(waitLimit))
	resp, _ := hc.do("GET /two HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway || time.Since(start) > timeout+time.Second {
		t.Fatalf("%d after %v, want 502 after about %v", resp.StatusCode, time.Since(start), timeout)
	}
	tlsc.Close()
	sv.waitDoneOnce(t)
}

// TestCleartextUnreadableHeadRecorded: a request head that classification
// took for HTTP but that goproxy cannot read (a header line without a
// colon), followed by junk, reaches nobody, and still leaves a record. The
// record's bytes_out is what went to the destination: nothing. It used to
// be the client's bytes, so a client could make a destination look sent
// whatever it liked; the client's count is in the error instead. The
// destination is a loopback TCP connection that counts what it receives.
func TestCleartextUnreadableHeadRecorded(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, dest := testnet.TCPPair(t)
	received := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, dest) // until the interceptor closes its end
		received <- n
	}()
	c, sv := r.connect(upEnd, httpDest)
	sent := "GET / HTTP/1.1\r\nHost: www.example.test\r\nno colon here\r\n" + strings.Repeat("junk", 100) + "\r\n\r\n"
	if _, err := io.WriteString(c, sent); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, c) // whatever goproxy answers, until it closes
	sv.waitDoneOnce(t)
	select {
	case n := <-received:
		if n != 0 {
			t.Errorf("the destination received %d bytes, want none", n)
		}
	case <-time.After(waitLimit):
		t.Fatal("the upstream connection is still open")
	}
	recs := r.records()
	if len(recs) != 1 {
		t.Fatalf("records %+v, want one", recs)
	}
	if rec := recs[0]; rec.Kind != "http" || rec.Action != "deny" || rec.Result != "denied" || rec.BytesOut != 0 || rec.BytesIn != 0 ||
		!strings.Contains(rec.Error, "no request could be read") || !strings.Contains(rec.Error, fmt.Sprintf("%d bytes from the client", len(sent))) {
		t.Errorf("record %+v, want a deny of nothing sent either way, the client's %d bytes in its error", rec, len(sent))
	}
}

// TestH2CDomainRules: under a policy that allows HTTP only for names (a
// default deny), a cleartext HTTP/2 client is served stream by stream:
// each decided on its own :authority and answered in HTTP/2, not refused
// as a whole, nameless, with an HTTP/1 403 it cannot read.
func TestH2CDomainRules(t *testing.T) {
	r := newRig(t, `
policy:
  default: deny
  rules:
    - name: web
      domains: ["www.example.test"]
      action: allow
`)
	upEnd, up := r.startUpstream(nil)
	cc, sv := r.h2cClient(t, upEnd)
	get := func(url string) (*http.Response, string) { t.Helper(); return h2cGet(t, cc, url) }
	if resp, body := get("http://www.example.test/a"); resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" || body != "upstream: GET www.example.test /a HTTP/1.1" {
		t.Fatalf("allowed: %d %s %q", resp.StatusCode, resp.Proto, body)
	}
	if resp, body := get("http://other.example.test/b"); resp.StatusCode != 403 || resp.Proto != "HTTP/2.0" || body != "" {
		t.Fatalf("denied: %d %s %q", resp.StatusCode, resp.Proto, body)
	}
	cc.Close()
	sv.waitDoneOnce(t)
	up.waitClosed(t)
	if got := strings.Join(up.requests(), "; "); got != "GET www.example.test /a HTTP/1.1" {
		t.Errorf("the upstream served %q", got)
	}
	recs := r.records()
	if len(recs) != 2 {
		t.Fatalf("records %+v, want two", recs)
	}
	if rec := recs[0]; rec.Kind != "http" || rec.Host != "www.example.test" || rec.Path != "/a" ||
		rec.Action != "allow" || rec.Rule != "web" || rec.Status != 200 {
		t.Errorf("record %+v", rec)
	}
	if rec := recs[1]; rec.Kind != "http" || rec.Host != "other.example.test" || rec.Path != "/b" ||
		rec.Action != "deny" || rec.Rule != "default" || rec.Status != 403 {
		t.Errorf("record %+v", rec)
	}
	if n := r.ic.Denied(); n != 1 {
		t.Errorf("Denied() = %d, want 1", n)
	}
}

// h2cClient connects a cleartext HTTP/2 client (prior knowledge) to the
// rig's plain HTTP destination, whose upstream end is upEnd.
func (r *rig) h2cClient(t *testing.T, upEnd net.Conn) (*http2.ClientConn, *served) {
	t.Helper()
	c, sv := r.connect(upEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	return cc, sv
}

// h2cGet sends a GET for url over the HTTP/2 connection cc and returns the
// response and its body.
func h2cGet(t *testing.T, cc *http2.ClientConn, url string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}
