package appliance

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/net/websocket"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// upstream is a real HTTPS (and WebSocket) server on loopback with a
// certificate for www.example.test from a CA of its own.
type upstream struct {
	addr   netip.AddrPort
	caFile string
	ca     *certs.CA
	step   chan struct{} // lets /events write its next event
	open   atomic.Int64  // connections the server holds open
}

func startUpstream(t *testing.T, addr netip.Addr, selfSigned bool) *upstream {
	t.Helper()
	return startUpstreamAt(t, netip.AddrPortFrom(addr, 0), selfSigned)
}

// startUpstreamAt is startUpstream on a given port (0: any).
func startUpstreamAt(t *testing.T, addr netip.AddrPort, selfSigned bool) *upstream {
	t.Helper()
	ca := must(certs.Generate("test upstream CA"))(t)
	minter := must(certs.NewMinter(ca, certs.MinterOptions{}))(t)
	leaf := must(minter.Leaf("www.example.test"))(t)
	if selfSigned { // a certificate no configured root vouches for
		other := must(certs.Generate("unknown CA"))(t)
		leaf = must(must(certs.NewMinter(other, certs.MinterOptions{}))(t).Leaf("www.example.test"))(t)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s over %s host=%s", r.URL.Query().Get("who"), r.Proto, r.Host)
	})
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	step := make(chan struct{})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		for i := range 3 { // a chunked stream: one event, then wait for the test
			fmt.Fprintf(w, "event %d\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-step:
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Second):
				return
			}
		}
		fmt.Fprintln(w, "end")
	})
	ln := must(tls.Listen("tcp", addr.String(), &tls.Config{
		Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"h2", "http/1.1"},
	}))(t)
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	os.WriteFile(caFile, ca.TrustPEM(), 0o644)
	up := &upstream{addr: ln.Addr().(*net.TCPAddr).AddrPort(), caFile: caFile, ca: ca, step: step}
	srv := &http.Server{Handler: mux, ConnState: func(_ net.Conn, s http.ConnState) { countConn(&up.open, s) }}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return up
}

const interceptPolicy = `
policy:
  default: bump
  rules:
    - name: no-evil
      domains: ["evil.example.test"]
      action: deny
    - name: pass-bank
      domains: ["bank.example.test"]
      action: splice
`

func interceptRig(t *testing.T, up *upstream, pol string) *rig {
	cfg := filepath.Join(t.TempDir(), "gwlbproxy.yaml")
	os.WriteFile(cfg, []byte(pol), 0o644)
	r := newRig(t, func(o *Options) {
		o.Config = cfg
		o.UpstreamCA = []string{up.caFile}
	}, nil)
	// Every example.test name is the upstream's: the destination check
	// (destination_check: dns) finds it so.
	r.dns.Set("*.example.test", 60, up.addr.Addr())
	return r
}

func (r *rig) caPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.app.ca.TrustPEM())
	return pool
}

// tlsDial connects through the appliance and handshakes with sni.
func (r *rig) tlsDial(t *testing.T, dst netip.AddrPort, cfg *tls.Config) (*tls.Conn, error) {
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), dst))(t)
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// httpClient returns a client whose every connection goes through the
// appliance to dst, with the appliance's CA trusted.
func (r *rig) httpClient(t *testing.T, dst netip.AddrPort, h2 bool) *http.Client {
	protos := []string{"http/1.1"}
	if h2 {
		protos = []string{"h2", "http/1.1"}
	}
	tr := &http.Transport{
		ForceAttemptHTTP2: h2,
		TLSClientConfig:   &tls.Config{RootCAs: r.caPool(), NextProtos: protos},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return r.client.DialTCP(ctx, dst)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestBumpHTTP1AndHTTP2(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	for _, h2 := range []bool{false, true} {
		client := r.httpClient(t, up.addr, h2)
		defer client.CloseIdleConnections()
		resp, err := client.Get("https://www.example.test/hello?who=bob&secret=1")
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantProto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
		if resp.Proto != wantProto || !strings.HasPrefix(string(body), "hello bob over") {
			t.Errorf("h2=%v: %s %q", h2, resp.Proto, body)
		}
		issuer := resp.TLS.PeerCertificates[0].Issuer.CommonName
		if issuer != r.app.ca.Certificate().Subject.CommonName {
			t.Errorf("h2=%v: leaf issued by %q, not the appliance CA", h2, issuer)
		}
		client.CloseIdleConnections() // the connection's tls record is written when it ends
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "http") >= 2 && countKind(rs, "tls") >= 2 })
	var httpRec, tlsRec *records.Record
	for i := range recs {
		switch recs[i].Kind {
		case "http":
			httpRec = &recs[i]
		case "tls":
			tlsRec = &recs[i]
		}
	}
	if httpRec == nil || httpRec.Action != "bump" || httpRec.Scheme != "https" || httpRec.Path != "/hello" ||
		httpRec.Status != 200 || httpRec.BytesIn == 0 || httpRec.Host != "www.example.test" {
		t.Errorf("http record %+v", httpRec)
	}
	if tlsRec == nil || tlsRec.UpstreamVerify != "ok" || tlsRec.SNI != "www.example.test" || tlsRec.TLSVersion == "" {
		t.Errorf("tls record %+v", tlsRec)
	}
	for _, rec := range recs {
		if strings.Contains(fmt.Sprint(rec), "secret") {
			t.Errorf("a record holds the query string: %+v", rec)
		}
	}
}

// TestBumpStreamsChunkedResponse: each event of a chunked stream reaches a
// bumped HTTP/1.1 client while the origin waits before the next (the
// appliance coalesces a response's small writes, but never holds one back
// for the rest), and the stream's end lets the connection carry the next
// request.
func TestBumpStreamsChunkedResponse(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	client := r.httpClient(t, up.addr, false)
	var conns []string
	for round := range 2 {
		req := must(http.NewRequest("GET", "https://www.example.test/events", nil))(t)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(ci httptrace.GotConnInfo) { conns = append(conns, ci.Conn.LocalAddr().String()) },
		}))
		resp := must(client.Do(req))(t)
		if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
			t.Fatalf("round %d: transfer encoding %v, want chunked", round, resp.TransferEncoding)
		}
		br := bufio.NewReader(resp.Body)
		for i := range 3 {
			read := make(chan string, 1)
			go func() { line, _ := br.ReadString('\n'); read <- line }()
			select {
			case line := <-read:
				if line != fmt.Sprintf("event %d\n", i) {
					t.Fatalf("round %d: event %d: %q", round, i, line)
				}
			case <-time.After(2 * time.Second): // the origin waits 10 s for the step
				t.Fatalf("round %d: event %d did not arrive while the origin waited", round, i)
			}
			select {
			case up.step <- struct{}{}:
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: the origin stopped waiting for event %d's step", round, i)
			}
		}
		rest, err := io.ReadAll(br)
		resp.Body.Close()
		if err != nil || string(rest) != "end\n" {
			t.Fatalf("round %d: end of stream %q, %v", round, rest, err)
		}
	}
	if len(conns) != 2 || conns[0] != conns[1] {
		t.Errorf("connections %v: want the second request on the first's connection", conns)
	}
}

// TestBumpPipelinedRequests: requests a client sends back to back, before
// any answer, each get their response, in order. goproxy then reads the
// next request from its buffer, not from the connection, so the end of a
// held response is seen only when the next request starts.
func TestBumpPipelinedRequests(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	const req = "GET /hello?who=%s HTTP/1.1\r\nHost: www.example.test\r\n\r\n"
	if _, err := fmt.Fprintf(tc, req+req+req, "a", "b", "c"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	for _, who := range []string{"a", "b", "c"} {
		tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response for %s: %v", who, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || !strings.HasPrefix(string(body), "hello "+who+" over") {
			t.Fatalf("response for %s: %q, %v", who, body, err)
		}
	}
}

// TestBumpH2ClientLeavesWithStreamsOpen: an HTTP/2 client that sends
// requests and closes at once, before any answer. goproxy's HTTP/2 server
// closes the connection without waiting for its streams' handlers; the flow
// ends after the requests in flight then, so that none returns an upstream
// connection to a pool already emptied (where it would idle for 90 s): no
// flow stays active and no upstream connection stays open.
func TestBumpH2ClientLeavesWithStreamsOpen(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	const conns = 10
	for i := range conns {
		tc := must(r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"h2"}}))(t)
		var buf, hb bytes.Buffer
		buf.WriteString(http2.ClientPreface)
		fr := http2.NewFramer(&buf, nil)
		fr.WriteSettings()
		enc := hpack.NewEncoder(&hb)
		for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "www.example.test"}, {":path", "/hello"}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		for id := uint32(1); id <= 9; id += 2 {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
		}
		tc.Write(buf.Bytes())
		time.Sleep(time.Duration(i) * 300 * time.Microsecond) // closes at different points of the requests
		tc.Close()
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") >= conns })
	if n := countKind(recs, "tls"); n != conns {
		t.Fatalf("%d connection records, want %d", n, conns)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.app.proxy.Active() != 0 || up.open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("10s after the clients left: %d flows active, %d upstream connections open", r.app.proxy.Active(), up.open.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countKind(rs []records.Record, kind string) int {
	n := 0
	for _, r := range rs {
		if r.Kind == kind {
			n++
		}
	}
	return n
}

func TestSpliceShowsOriginCertificate(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(up.ca.TrustPEM())
	// The origin's certificate names www.example.test; a spliced client
	// sees it unchanged, so verify against that name.
	tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "bank.example.test", RootCAs: pool, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; got != "test upstream CA" {
		t.Fatalf("spliced client sees a certificate from %q", got)
	}
	tc.Close()
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") > 0 })
	if rec := recs[0]; rec.Action != "splice" || rec.Rule != "pass-bank" || rec.SNI != "bank.example.test" {
		t.Fatalf("record %+v", rec)
	}
}

func TestDenyTLSByDomain(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	_, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "evil.example.test", RootCAs: r.caPool()})
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("handshake with a denied name: %v, want an access-denied alert", err)
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") > 0 })
	if rec := recs[0]; rec.Action != "deny" || rec.Rule != "no-evil" || rec.Result != "denied" {
		t.Fatalf("record %+v", rec)
	}
}

func TestUnverifiedUpstreamDenied(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), true)
	r := interceptRig(t, up, interceptPolicy)
	_, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool()})
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("handshake with an unverifiable upstream: %v, want a bad-certificate alert", err)
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") > 0 })
	if rec := recs[0]; rec.Action != "deny" || rec.UpstreamVerify != "failed" || !strings.Contains(rec.Error, "unknown authority") {
		t.Fatalf("record %+v", rec)
	}
}

func TestWebSocketThroughBump(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("%v; access log so far: %s", err, summarizeRecords(r.readRecords()))
	}
	wcfg := must(websocket.NewConfig("wss://www.example.test/ws", "https://www.example.test/"))(t)
	ws := must(websocket.NewClient(wcfg, tc))(t)
	for _, msg := range []string{"one", "two"} {
		must(ws.Write([]byte(msg)))(t)
		buf := make([]byte, 16)
		n := must(ws.Read(buf))(t)
		if string(buf[:n]) != msg {
			t.Fatalf("websocket echo %q, want %q", buf[:n], msg)
		}
	}
	ws.Close()
	recs := r.records(func(rs []records.Record) bool {
		for _, r := range rs {
			if r.WebSocket {
				return true
			}
		}
		return false
	})
	for _, rec := range recs {
		if rec.WebSocket && rec.Status == 101 && rec.Path == "/ws" {
			return
		}
	}
	t.Fatalf("no websocket record in %+v", recs)
}

// TestPlainHTTP: the dial goes to the flow's destination whatever the Host
// header says, and a denied Host gets a 403 naming the rule.
func TestPlainHTTP(t *testing.T) {
	tn := newTestNet()
	up := startUpstream(t, tn.server(4), false)
	r := interceptRig(t, up, interceptPolicy)
	origin := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		body := "origin saw host " + req.Host
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	})
	get := func(host string) (*http.Response, string) {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), origin))(t)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /page?token=x HTTP/1.1\r\nHost: %s\r\nUser-Agent: gwlbtest\r\n\r\n", host)
		resp := must(http.ReadResponse(bufio.NewReader(c), nil))(t)
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	// The forged Host names the HTTPS upstream's address; the request must
	// still reach the original destination.
	resp, body := get(up.addr.String())
	if resp.StatusCode != 200 || body != "origin saw host "+up.addr.String() {
		t.Fatalf("forged Host: %d %q", resp.StatusCode, body)
	}
	resp, body = get("evil.example.test")
	if resp.StatusCode != 403 || !strings.Contains(body, "no-evil") {
		t.Fatalf("denied Host: %d %q", resp.StatusCode, body)
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "http") >= 2 })
	var allowed, denied bool
	for _, rec := range recs {
		allowed = allowed || (rec.Action == "allow" && rec.Status == 200 && rec.Path == "/page" && rec.UserAgent == "gwlbtest")
		denied = denied || (rec.Action == "deny" && rec.Status == 403 && rec.Rule == "no-evil")
	}
	if !allowed || !denied {
		t.Fatalf("records %+v", recs)
	}
}

// TestTrustPageThroughDataPath: a request for the trust host is answered by
// the appliance with its CA, which then verifies a bumped connection.
func TestTrustPageThroughDataPath(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	plain := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), plain))(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /ca.pem HTTP/1.1\r\nHost: gwlbproxy.internal\r\n\r\n")
	resp := must(http.ReadResponse(bufio.NewReader(c), nil))(t)
	pemBytes, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if resp.StatusCode != 200 || !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("trust host answered %d %q", resp.StatusCode, pemBytes)
	}
	tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: pool})
	if err != nil {
		t.Fatalf("the CA from the trust page does not verify a bumped connection: %v", err)
	}
	tc.Close()
}

func TestAuditModeNeverBumps(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, "policy:\n  mode: audit\n  default: bump\n")
	if r.app.ca != nil {
		t.Error("audit mode created a CA")
	}
	tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if got := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; got != "test upstream CA" {
		t.Fatalf("audit mode presented a certificate from %q", got)
	}
}

// TestReloadRefusesBumpWithoutCA: an appliance that started in audit mode
// has no CA; a reload to a policy that bumps is refused, saying why, and the
// audit policy stays (rather than every bump silently becoming a splice).
func TestReloadRefusesBumpWithoutCA(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, "policy:\n  mode: audit\n  default: allow\n")
	os.WriteFile(r.app.opts.Config, []byte(interceptPolicy), 0o644)
	err := r.app.Reload()
	if err == nil || !strings.Contains(err.Error(), "without a CA") {
		t.Fatalf("reload to a bumping policy without a CA: %v, want a refusal", err)
	}
	if r.app.policy.Load().Mode() != policy.Audit {
		t.Fatal("the refused policy was loaded")
	}
	os.WriteFile(r.app.opts.Config, []byte("policy:\n  default: deny\n"), 0o644)
	if err := r.app.Reload(); err != nil {
		t.Fatalf("a policy that needs no CA: %v", err)
	}
}

// TestReload: a good file takes effect for new flows and for the next
// request of an open bumped connection; a bad one is rejected naming the
// problem and the running policy stays.
func TestReload(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	open, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool()})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	os.WriteFile(r.app.opts.Config, []byte("policy:\n  rules:\n    - name: x\n      dest_cidrs: [\"10.0.0.0/33\"]\n      action: deny\n"), 0o644)
	if err := r.app.Reload(); err == nil || !strings.Contains(err.Error(), "gwlbproxy.yaml:") || !strings.Contains(err.Error(), "10.0.0.0/33") {
		t.Fatalf("bad config: %v", err)
	}
	if _, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool()}); err != nil {
		t.Fatalf("after a rejected reload: %v", err)
	}
	os.WriteFile(r.app.opts.Config, []byte("policy:\n  default: deny\n"), 0o644)
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.client.DialTCP(ctxT(t, 5*time.Second), up.addr); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("after reloading default deny: %v, want a refusal", err)
	}
	// The connection opened before the reload stays bumped, but its next
	// request is decided by the policy in force: denied.
	open.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(open, "GET /hello?who=old HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(open), nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a request on a connection opened before reloading default deny: %v %v, want 403", resp, errors.Join(err))
	}
	// Each record names the policy that decided it by its file's hash, as
	// the reload logged it: the connection's request and the refused
	// connection, decided after it, the new; so does the connection, whose
	// name the reload denies (its request for that name decided it again:
	// policy.md), with the connection ended by the reload.
	openPort := uint16(open.LocalAddr().(*net.TCPAddr).Port)
	open.Close()
	oldID, newID := policy.FileHash([]byte(interceptPolicy)), policy.FileHash([]byte("policy:\n  default: deny\n"))
	if st := r.app.policy.Status(); st.Hash != newID {
		t.Fatalf("the policy in force has hash %q, want %q", st.Hash, newID)
	}
	recs := r.records(func(rs []records.Record) bool {
		return countKind(rs, "tls") > 0 && countKind(rs, "http") > 0 && countKind(rs, "tcp") > 0
	})
	for _, rec := range recs {
		want := newID
		if rec.Kind == "tls" && rec.ClientPort != openPort {
			want = oldID // the connection dialled after the rejected reload: nothing decided it again
		}
		if rec.Policy != want {
			t.Errorf("%s record (%s, rule %q, client port %d) names policy %q, want %q", rec.Kind, rec.Action, rec.Rule, rec.ClientPort, rec.Policy, want)
		}
		if rec.Kind == "tls" && rec.ClientPort == openPort && (rec.Action != "deny" || rec.Result != "denied") {
			t.Errorf("the connection open across the reload: tls record %s/%s, want deny/denied: the reload denies its name", rec.Action, rec.Result)
		}
	}
}

// TestBumpClientRejectsLeaf: a client that does not trust the CA fails its
// handshake, and the connection's record says so instead of "ok".
func TestBumpClientRejectsLeaf(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), up.addr))(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: x509.NewCertPool()}).Handshake(); err == nil {
		t.Fatal("a client trusting nothing completed a bumped handshake")
	}
	// The client's alert is queued behind nothing but may not have left yet:
	// closing now, with the appliance's unread flight in the socket, resets
	// the connection and discards it (as a kernel does), and a reset without
	// an alert is recorded as one. Ending with a FIN after the alert, and
	// reading to the appliance's close, delivers it.
	c.CloseWrite()
	io.Copy(io.Discard, c)
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") > 0 })
	if rec := recs[0]; rec.Action != "bump" || rec.Result != "error" || !strings.Contains(rec.Error, "handshake") {
		t.Fatalf("record %+v, want a bump that failed the client handshake", rec)
	}
}

// TestTrustPageOverTLS: the trust host is answered over TLS too, with no
// upstream asked to vouch for a name none can have.
func TestTrustPageOverTLS(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "gwlbproxy.internal", RootCAs: r.caPool()})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	fmt.Fprintf(tc, "GET /ca.pem HTTP/1.1\r\nHost: gwlbproxy.internal\r\n\r\n")
	resp := must(http.ReadResponse(bufio.NewReader(tc), nil))(t)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !x509.NewCertPool().AppendCertsFromPEM(body) {
		t.Fatalf("trust page over TLS: %d %q", resp.StatusCode, body)
	}
}

// TestBumpALPNOnlyWhatTheClientOffers: a client offering neither h2 nor
// http/1.1 is not refused (goproxy would add both), and gets no ALPN.
func TestBumpALPNOnlyWhatTheClientOffers(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	tc, err := r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.0"}})
	if err != nil {
		t.Fatalf("a client offering only http/1.0: %v", err)
	}
	defer tc.Close()
	if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
		t.Fatalf("negotiated %q, which the client never offered", p)
	}
	fmt.Fprintf(tc, "GET /hello HTTP/1.0\r\nHost: www.example.test\r\n\r\n")
	resp := must(http.ReadResponse(bufio.NewReader(tc), nil))(t)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// TestUnreadableClientHelloRefused: a TLS hello the appliance cannot read
// carries no name for the domain rules, so it is refused, not relayed.
func TestUnreadableClientHelloRefused(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), up.addr))(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// A handshake record holding a ClientHello whose length overruns it,
	// and no more: the half-close ends the wait for the rest.
	must(c.Write([]byte{22, 3, 1, 0, 6, 1, 0, 0, 200, 3, 3}))(t)
	must(0, c.CloseWrite())(t)
	got, _ := io.ReadAll(c)
	if !bytes.HasPrefix(got, []byte{21, 3, 3, 0, 2, 2}) {
		t.Fatalf("answer %x, want a fatal TLS alert", got)
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") > 0 })
	if rec := recs[0]; rec.Action != "deny" || !strings.Contains(rec.Error, "ClientHello could not be read") {
		t.Fatalf("record %+v", rec)
	}
}

// TestRequestHeadLimit: an HTTP/1 request head larger than
// --max-header-bytes gets 431 from the appliance, which stops reading it
// (so a client cannot grow one until memory runs out); request bodies are
// not limited, and the limit starts afresh with each request on a
// keep-alive connection. Plain HTTP and bumped HTTPS alike.
func TestRequestHeadLimit(t *testing.T) {
	tn := newTestNet()
	up := startUpstream(t, tn.server(4), false)
	r := interceptRig(t, up, interceptPolicy)
	ln := must(net.Listen("tcp", netip.AddrPortFrom(r.net.server(3), 0).String()))(t)
	origin := &http.Server{MaxHeaderBytes: 8 << 20, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/upgrade-foo" { // a 101 to something not WebSocket
			c, bw, _ := w.(http.Hijacker).Hijack()
			bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
			bw.Flush()
			c.Close()
			return
		}
		n, _ := io.Copy(io.Discard, req.Body)
		fmt.Fprintf(w, "body %d, header %d", n, len(req.Header.Get("X-Big")))
	})}
	go origin.Serve(ln)
	t.Cleanup(func() { origin.Close() })

	big := func(n int) string { return strings.Repeat("a", n) }
	const limit = intercept.DefaultMaxHeaderBytes
	check := func(t *testing.T, c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		roundTrip := func(req string) (int, string) {
			t.Helper()
			go io.WriteString(c, req) // the appliance may stop reading before the end
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		body := big(4 * limit)
		if code, got := roundTrip(fmt.Sprintf("POST /up HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: %d\r\n\r\n%s", len(body), body)); code != 200 || got != fmt.Sprintf("body %d, header 0", len(body)) {
			t.Fatalf("a body of 4× the head limit: %d %q", code, got)
		}
		for range 3 { // each head just under the limit: the count starts afresh
			if code, got := roundTrip("GET /h HTTP/1.1\r\nHost: www.example.test\r\nX-Big: " + big(limit-200) + "\r\n\r\n"); code != 200 || got != fmt.Sprintf("body 0, header %d", limit-200) {
				t.Fatalf("a head just under the limit: %d %q", code, got)
			}
		}
		// A denied upload: the body the upstream never read is no head.
		if code, _ := roundTrip(fmt.Sprintf("POST /up HTTP/1.1\r\nHost: evil.example.test\r\nContent-Length: %d\r\n\r\n%s", len(body), body)); code != http.StatusForbidden {
			t.Fatalf("a denied upload: %d, want 403", code)
		}
		if code, got := roundTrip("GET /h HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); code != 200 {
			t.Fatalf("the request after a denied upload: %d %q", code, got)
		}
		// A 101 to another protocol would leave goproxy reading requests,
		// unbounded, from that protocol's stream: it gets 502.
		if code, got := roundTrip("GET /upgrade-foo HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"); code != http.StatusBadGateway {
			t.Fatalf("an upgrade to foo: %d %q, want 502", code, got)
		}
		// A header line of 16 MiB: refused once the limit is passed.
		code, got := roundTrip("GET /h HTTP/1.1\r\nHost: www.example.test\r\nX-Big: " + big(16<<20) + "\r\n\r\n")
		if code != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(got, "gwlbproxy") {
			t.Fatalf("a 16 MiB head: %d %q, want 431 from gwlbproxy", code, got)
		}
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("the connection stayed open after 431")
		}
	}
	t.Run("http", func(t *testing.T) {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), must(netip.ParseAddrPort(ln.Addr().String()))(t)))(t)
		defer c.Close()
		check(t, c)
	})
	refused := func(t *testing.T, c net.Conn, start string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		go io.WriteString(c, start+"X-Big: "+big(16<<20)+"\r\n\r\n")
		resp := must(http.ReadResponse(bufio.NewReader(c), nil))(t)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(string(b), "gwlbproxy") {
			t.Fatalf("a 16 MiB head: %d %q", resp.StatusCode, b)
		}
	}
	// Bumped, with ALPN http/1.1; and with h2 negotiated but HTTP/1 spoken,
	// which goproxy serves as HTTP/1 since no HTTP/2 preface came.
	for _, alpn := range []string{"http/1.1", "h2"} {
		t.Run("bumped-"+alpn, func(t *testing.T) {
			tc := must(r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{alpn}}))(t)
			defer tc.Close()
			if got := tc.ConnectionState().NegotiatedProtocol; got != alpn {
				t.Fatalf("negotiated %q", got)
			}
			refused(t, tc, "GET /hello HTTP/1.1\r\nHost: www.example.test\r\n")
		})
	}
	// The start of an HTTP/2 preface, then a pause past the sniffer's wait
	// (classified h2c), then an HTTP/1 head.
	t.Run("stalled-h2c", func(t *testing.T) {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), must(netip.ParseAddrPort(ln.Addr().String()))(t)))(t)
		defer c.Close()
		must(io.WriteString(c, "PRI * HTTP/2.0\r\n"))(t)
		time.Sleep(sniff.CompleteTimeout + 500*time.Millisecond)
		refused(t, c, "Host: www.example.test\r\n")
	})
	recs := r.records(func(rs []records.Record) bool {
		n := 0
		for _, rec := range rs {
			if rec.Status == http.StatusRequestHeaderFieldsTooLarge {
				n++
			}
		}
		return n == 4
	})
	for _, rec := range recs {
		if rec.Status == http.StatusRequestHeaderFieldsTooLarge && (rec.Action != "deny" || !strings.Contains(rec.Error, "request head larger than")) {
			t.Fatalf("record %+v", rec)
		}
	}
}

// TestSilentClientMeetsDomainRules: a client that waits before its
// ClientHello (once it was relayed as opaque TCP after 300 ms) is still
// classified by it, so a denied name stays denied however long it waits.
func TestSilentClientMeetsDomainRules(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), up.addr))(t)
	defer c.Close()
	time.Sleep(time.Second)
	tc := tls.Client(c, &tls.Config{ServerName: "evil.example.test", RootCAs: r.caPool()})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("handshake after a pause with a denied name: %v, want an access-denied alert", err)
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") > 0 })
	if rec := recs[0]; rec.Action != "deny" || rec.Rule != "no-evil" {
		t.Fatalf("record %+v", rec)
	}
}

// TestShortHTTP10Request: a whole request shorter than the HTTP/2 preface
// (24 bytes) is answered, plain and bumped; goproxy once waited for 24
// bytes to tell it from h2c.
func TestShortHTTP10Request(t *testing.T) {
	tn := newTestNet()
	up := startUpstream(t, tn.server(4), false)
	r := interceptRig(t, up, interceptPolicy)
	origin := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	read := func(c net.Conn, want string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("response to a short request: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), want) {
			t.Fatalf("response %d %q, want 200 %q", resp.StatusCode, b, want)
		}
	}
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), origin))(t)
	defer c.Close()
	must(io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"))(t)
	read(c, "ok")

	tc := must(r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}))(t)
	defer tc.Close()
	must(io.WriteString(tc, "GET /hello HTTP/1.0\r\n\r\n"))(t)
	read(tc, "hello")
}
