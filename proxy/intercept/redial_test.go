package intercept_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// legacyPolicy bumps two names by a rule that accepts an unverified
// upstream; %s is a policy-level setting.
const legacyPolicy = `
policy:
  %s
  default: deny
  rules:
    - name: legacy
      domains: ["www.example.test", "api.example.test"]
      action: bump
      allow_unverified_upstream: true
`

// TestBumpRedialUnverified: under a rule with allow_unverified_upstream,
// each upstream connection of a bump is recorded by its own verification.
// The first connection's certificate verifies, the origin drops it after
// the first request, and the session's redial meets a certificate nobody
// trusts: the request over it is recorded upstream_verify failed, with
// why, and so is the tls record (before, both said ok: the first
// connection's result). The other way round, a request over a redial that
// verified says ok. Over HTTP/1 (h1Transport); TestBumpRedialUnverifiedH2
// is the same over HTTP/2 (http.Transport).
func TestBumpRedialUnverified(t *testing.T) {
	for _, tc := range []struct {
		name         string
		firstTrusted bool
	}{
		{"verified then unverified", true},
		{"unverified then verified", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, fmt.Sprintf(legacyPolicy, "destination_check: off"))
			trusted, stranger := r.upLeaf("www.example.test"), r.strangerLeaf("www.example.test")
			first, second := trusted, stranger
			if !tc.firstTrusted {
				first, second = stranger, trusted
			}
			hc, sv, up2 := bumpRedialH1(t, r, first, second)
			if resp, body := hc.do("GET /two HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("second response %d %q", resp.StatusCode, body)
			}
			hc.c.Close()
			sv.waitDoneOnce(t)
			if got := up2.requests(); len(got) != 1 {
				t.Fatalf("the second upstream connection served %q", got)
			}
			wantVerify := map[bool]string{true: "ok", false: "failed"}
			hr := ofKind(r.records(), "http")
			if len(hr) != 2 {
				t.Fatalf("http records %+v", hr)
			}
			for i, trustedConn := range []bool{tc.firstTrusted, !tc.firstTrusted} {
				rec := hr[i]
				t.Logf("%s: upstream_verify %q, error %q", rec.Path, rec.UpstreamVerify, rec.Error)
				if rec.UpstreamVerify != wantVerify[trustedConn] || rec.Status != 200 || rec.Result != "ok" ||
					trustedConn != (rec.Error == "") || !trustedConn && !strings.Contains(rec.Error, "accepted by rule") {
					t.Errorf("record of %s, over a connection whose certificate verified: %v: %+v", rec.Path, trustedConn, rec)
				}
			}
			tr := ofKind(r.records(), "tls")
			if len(tr) != 1 || tr[0].UpstreamVerify != "failed" || !strings.Contains(tr[0].Error, "certificate signed by unknown authority") {
				t.Errorf("tls records %+v, want one saying failed", tr)
			}
		})
	}
}

// TestBumpRedialUnverifiedNameCheck: a request for a name the first,
// verified, certificate covers, but that does not resolve to the
// destination, is checked (and denied) under a rule that accepts an
// unverified upstream: the connection it is sent over may be a redial
// whose certificate failed, which proves nothing. Before, the first
// certificate let it skip the check, and it went over such a connection.
func TestBumpRedialUnverifiedNameCheck(t *testing.T) {
	dc := &destCheck{bad: map[string]bool{"api.example.test": true}}
	r := newRig(t, fmt.Sprintf(legacyPolicy, ""), func(c *intercept.Config) { c.DestinationCheck = dc.check })
	cert, err := r.upMint.LeafFor([]string{"www.example.test", "api.example.test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc, sv, up2 := bumpRedialH1(t, r, cert, r.strangerLeaf("api.example.test"))
	if resp, body := hc.do("GET /two HTTP/1.1\r\nHost: api.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("second response %d %q, want 403", resp.StatusCode, body)
	}
	hc.c.Close()
	sv.waitDoneOnce(t)
	if got := up2.requests(); len(got) != 0 {
		t.Errorf("the redial served %q", got)
	}
	hr := ofKind(r.records(), "http")
	if len(hr) != 2 {
		t.Fatalf("http records %+v", hr)
	}
	want := records.Record{Action: "deny", Status: 403, DestCheck: "mismatch", Host: "api.example.test"}
	if rec := hr[1]; rec.Action != want.Action || rec.Status != want.Status || rec.DestCheck != want.DestCheck || rec.Host != want.Host {
		t.Errorf("record of the second request %+v", rec)
	}
}

// TestBumpRedialUnverifiedH2 is TestBumpRedialUnverified's first case for
// an HTTP/2 client and origin, whose requests go over http.Transport (the
// connection a request took is told by its GotConn): the first origin
// connection, verified, ends after the first response, and the redial
// meets a certificate nobody trusts.
func TestBumpRedialUnverifiedH2(t *testing.T) {
	r := newRig(t, fmt.Sprintf(legacyPolicy, "destination_check: off"))
	var mu sync.Mutex
	var served []string
	handler := func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		served = append(served, req.URL.Path)
		mu.Unlock()
		io.WriteString(w, "hello")
	}
	cc, sv, first, upEnd := redialH2(t, r, handler)
	for _, path := range []string{"/one", "/two"} {
		resp, _ := getH2(t, cc, path)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d; records %+v", path, resp.StatusCode, r.records())
		}
		if path == "/one" {
			endFirstH2(t, first, upEnd) // /two needs another connection
		}
	}
	cc.Close()
	sv.waitDoneOnce(t)
	mu.Lock()
	t.Logf("served %q", served)
	mu.Unlock()
	if n := r.dials.Load(); n != 1 {
		t.Fatalf("%d further connections dialled, want 1", n)
	}
	hr := ofKind(r.records(), "http")
	if len(hr) != 2 {
		t.Fatalf("http records %+v", hr)
	}
	for _, rec := range hr {
		t.Logf("%s: upstream_verify %q, error %q", rec.Path, rec.UpstreamVerify, rec.Error)
	}
	if rec := hr[0]; rec.Path != "/one" || rec.UpstreamVerify != "ok" || rec.Error != "" {
		t.Errorf("record of /one %+v", rec)
	}
	if rec := hr[1]; rec.Path != "/two" || rec.UpstreamVerify != "failed" || !strings.Contains(rec.Error, "certificate signed by unknown authority") {
		t.Errorf("record of /two %+v", rec)
	}
	if tr := ofKind(r.records(), "tls"); len(tr) != 1 || tr[0].UpstreamVerify != "failed" {
		t.Errorf("tls records %+v, want one saying failed", tr)
	}
}

// bumpRedialH1 bumps an HTTP/1.1 client's connection to
// www.example.test on r: the first upstream connection has the
// certificate first and is dropped after one request, the redial has
// second. It sends GET /one, wants 200, and returns once the first
// upstream connection has closed: the next request needs the redial (up2).
// Both upstream connections are over TCP: the upstream's close_notify
// must not wait for a reader, as it would on a pipe; the idle connection
// has none.
func bumpRedialH1(t *testing.T, r *rig, first, second *tls.Certificate) (hc *httpClient, sv *served, up2 *upstream) {
	t.Helper()
	upEnd, up := r.startUpstreamTCP(first, "http/1.1")
	up.drop.Store(true)
	up2End, up2 := r.startUpstreamTCP(second, "http/1.1")
	r.offerRedial(up2End)
	c, sv := r.connect(upEnd, tlsDest)
	hc = newHTTPClient(t, bumpClient(t, r, c, "www.example.test", "http/1.1"))
	if resp, body := hc.do("GET /one HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("first response %d %q", resp.StatusCode, body)
	}
	up.waitClosed(t)
	return hc, sv, up2
}

// redialH2 bumps an HTTP/2 client's connection to www.example.test on r
// and returns its client end: the first origin connection (upEnd, served
// by first) has a certificate r's upstream trusts, the redial one nobody
// trusts; both origins serve h.
func redialH2(t *testing.T, r *rig, h http.HandlerFunc) (cc *http2.ClientConn, sv *served, first *http.Server, upEnd *closeSignal) {
	t.Helper()
	upEnd, originEnd := signalClosePair(t)
	first = h2OriginWith(t, r.upLeaf("www.example.test"), originEnd, h)
	up2End, origin2End := testnet.TCPPair(t)
	h2OriginWith(t, r.strangerLeaf("www.example.test"), origin2End, h)
	r.offerRedial(up2End)
	c, sv := r.connect(upEnd, tlsDest)
	cc, err := (&http2.Transport{}).NewClientConn(bumpClient(t, r, c, "www.example.test", "h2"))
	if err != nil {
		t.Fatal(err)
	}
	return cc, sv, first, upEnd
}

// getH2 sends GET path for www.example.test on cc and returns the
// response, its body read and closed.
func getH2(t *testing.T, cc *http2.ClientConn, path string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://www.example.test"+path, nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body
}

// h2OriginWith serves HTTP/2 over TLS with cert on c, with h; the
// server's Shutdown sends a GOAWAY and closes c once its streams are done.
func h2OriginWith(t *testing.T, cert *tls.Certificate, c net.Conn, h http.HandlerFunc) *http.Server {
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"}})
	hs, h2s := &http.Server{}, &http2.Server{}
	if err := http2.ConfigureServer(hs, h2s); err != nil {
		t.Fatal(err)
	}
	go func() {
		tc.SetDeadline(time.Now().Add(waitLimit))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		tc.SetDeadline(time.Time{})
		h2s.ServeConn(tc, &http2.ServeConnOpts{BaseConfig: hs, Handler: h})
	}()
	return hs
}

// TestBumpRedialRefusedH2 is TestBumpRedial's untrusted case for an
// HTTP/2 client and origin, whose requests go over http.Transport: the
// first origin connection, verified, ends after the first response; the
// redial meets a certificate nobody trusts under a rule that does not
// accept that, and /two is refused (502). Its record and the tls record
// say upstream_verify failed; before, both said ok.
func TestBumpRedialRefusedH2(t *testing.T) {
	r := newRig(t, testPolicy)
	handler := func(w http.ResponseWriter, req *http.Request) { io.WriteString(w, "hello") }
	cc, sv, first, upEnd := redialH2(t, r, handler)
	for _, tc := range []struct {
		path   string
		status int
	}{{"/one", 200}, {"/two", 502}} {
		resp, body := getH2(t, cc, tc.path)
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: status %d %q; records %+v", tc.path, resp.StatusCode, body, r.records())
		}
		if tc.path == "/one" {
			endFirstH2(t, first, upEnd) // /two needs another connection
		}
	}
	cc.Close()
	sv.waitDoneOnce(t)
	hr := ofKind(r.records(), "http")
	if len(hr) != 2 {
		t.Fatalf("http records %+v", hr)
	}
	for _, rec := range hr {
		t.Logf("%s: status %d, upstream_verify %q, error %q", rec.Path, rec.Status, rec.UpstreamVerify, rec.Error)
	}
	if rec := hr[0]; rec.Path != "/one" || rec.UpstreamVerify != "ok" || rec.Error != "" {
		t.Errorf("record of /one %+v", rec)
	}
	if rec := hr[1]; rec.Path != "/two" || rec.Status != 502 || rec.UpstreamVerify != "failed" ||
		!strings.Contains(rec.Error, "certificate signed by unknown authority") {
		t.Errorf("record of /two %+v, want 502 and upstream_verify failed", rec)
	}
	wantRedialRefusedTLSRecord(t, r.records(), false, "certificate signed by unknown authority")
}

// wantRedialRefusedTLSRecord checks the one tls record in recs: ok when
// the session's further connection verified, else failed, its error
// saying why (reason) of a further connection.
func wantRedialRefusedTLSRecord(t *testing.T, recs []records.Record, verified bool, reason string) {
	t.Helper()
	tr := ofKind(recs, "tls")
	if len(tr) != 1 {
		t.Fatalf("tls records %+v", tr)
	}
	rec := tr[0]
	t.Logf("tls record: upstream_verify %q, error %q", rec.UpstreamVerify, rec.Error)
	switch {
	case verified && (rec.UpstreamVerify != "ok" || rec.Error != ""):
		t.Errorf("tls record %+v, want upstream_verify ok", rec)
	case !verified && (rec.UpstreamVerify != "failed" || rec.Result != "ok" ||
		!strings.Contains(rec.Error, "upstream certificate refused: ") || !strings.Contains(rec.Error, reason) ||
		!strings.HasSuffix(rec.Error, "(a further connection)")):
		t.Errorf("tls record %+v, want upstream_verify failed, why, of a further connection", rec)
	}
}

// closeSignal is the appliance's end of an origin connection: its Close
// says the appliance's transport has dropped the connection.
type closeSignal struct {
	*net.TCPConn
	once   sync.Once
	closed chan struct{}
}

func (c *closeSignal) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.TCPConn.Close()
}

// signalClosePair is testnet.TCPPair whose first end tells its Close.
func signalClosePair(t *testing.T) (*closeSignal, *net.TCPConn) {
	a, b := testnet.TCPPair(t)
	return &closeSignal{TCPConn: a, closed: make(chan struct{})}, b
}

// endFirstH2 ends the first origin connection by first's Shutdown and
// waits until the appliance has dropped upEnd, its end of it. Shutdown
// returns before the GOAWAY is written (x/net only tells the serve loop),
// so a request sent at once could still be counted in the GOAWAY's last
// stream and served on the first connection, with no redial.
func endFirstH2(t *testing.T, first *http.Server, upEnd *closeSignal) {
	t.Helper()
	first.Shutdown(context.Background())
	select {
	case <-upEnd.closed:
	case <-time.After(waitLimit):
		t.Fatal("the appliance kept the first origin connection after its GOAWAY")
	}
}
