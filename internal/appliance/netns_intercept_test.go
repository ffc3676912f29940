package appliance

// The interception end-to-end test: real curl, openssl and a WebSocket
// client in the client namespace, the real gwlbproxy binary with a policy
// and its own CA, HTTPS origins in the servers' namespace.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// netnsWSClientEnv turns this test binary into a WebSocket client: it
// connects to the address in netnsWSClientEnv, handshakes TLS trusting only
// the CA file in netnsWSCAEnv, opens the wss:// URL in netnsWSURLEnv, sends
// a few messages and checks each comes back. It prints "local PORT", one
// "echo MSG" per message and "ok", and exits 0 only if all of it worked.
const (
	netnsWSClientEnv = "GWLBPROXY_NETNS_WSCLIENT"
	netnsWSURLEnv    = "GWLBPROXY_NETNS_WSURL"
	netnsWSCAEnv     = "GWLBPROXY_NETNS_WSCA"
)

func init() {
	if addr := os.Getenv(netnsWSClientEnv); addr != "" {
		if err := runNetnsWSClient(addr, os.Getenv(netnsWSURLEnv), os.Getenv(netnsWSCAEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "websocket client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

func runNetnsWSClient(addr, wsURL, caFile string) error {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	u, err := url.Parse(wsURL)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("local %d\n", c.LocalAddr().(*net.TCPAddr).Port)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// WebSocket upgrades are HTTP/1.1: offer nothing else.
	tc := tls.Client(c, &tls.Config{ServerName: u.Hostname(), RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	fmt.Printf("issuer %s\n", tc.ConnectionState().PeerCertificates[0].Issuer.CommonName)
	cfg, err := websocket.NewConfig(wsURL, "https://"+u.Host+"/")
	if err != nil {
		return err
	}
	ws, err := websocket.NewClient(cfg, tc)
	if err != nil {
		return fmt.Errorf("WebSocket handshake: %w", err)
	}
	for _, msg := range []string{"one", "two", strings.Repeat("x", 3000)} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if got != msg {
			return fmt.Errorf("echo %.20q (%d bytes), want %.20q (%d bytes)", got, len(got), msg, len(msg))
		}
		fmt.Printf("echo %.20s\n", got)
	}
	if err := ws.Close(); err != nil {
		return err
	}
	fmt.Println("ok")
	return nil
}

const (
	netnsWWW   = "www.example.test"
	netnsBank  = "bank.example.test"
	netnsEvil  = "evil.example.test"
	netnsTrust = "gwlbproxy.internal"

	netnsUpstreamCN   = "netns upstream CA"
	netnsUntrustedCN  = "netns untrusted CA"
	netnsInterceptPol = interceptPolicy // the in-process tests' policy
)

// netnsOrigins is the certificate material of the HTTPS origins.
type netnsOrigins struct {
	dir      string            // PORT.crt and PORT.key, for netnsTLSEnv
	caFile   string            // the upstream CA the appliance is told to trust
	ca       *x509.Certificate // that CA
	leaf443  *x509.Certificate // the certificate of port 443 (www and bank)
	leaf8443 *x509.Certificate // port 8443's, from a CA nobody trusts
}

// writeOrigins creates the upstream CA, port 443's leaf for www and bank
// from it, and port 8443's leaf for www from another CA.
func writeOrigins(t *testing.T) *netnsOrigins {
	t.Helper()
	o := &netnsOrigins{dir: filepath.Join(t.TempDir(), "tls")}
	if err := os.Mkdir(o.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca := must(certs.Generate(netnsUpstreamCN))(t)
	leaf := must(must(certs.NewMinter(ca, certs.MinterOptions{}))(t).LeafFor([]string{netnsWWW, netnsBank}, nil))(t)
	untrusted := must(certs.Generate(netnsUntrustedCN))(t)
	self := must(must(certs.NewMinter(untrusted, certs.MinterOptions{}))(t).Leaf(netnsWWW))(t)
	o.ca, o.leaf443, o.leaf8443 = ca.Certificate(), leaf.Leaf, self.Leaf
	o.caFile = filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(o.caFile, ca.TrustPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	for port, c := range map[string]*tls.Certificate{"443": leaf, "8443": self} {
		var chain []byte
		for _, der := range c.Certificate {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		key := must(x509.MarshalPKCS8PrivateKey(c.PrivateKey))(t)
		if err := os.WriteFile(filepath.Join(o.dir, port+".crt"), chain, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(o.dir, port+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return o
}

// accessLog is the appliance's --access-log file.
type accessLog string

func (l accessLog) read(t *testing.T) ([]records.Record, string) {
	t.Helper()
	data, err := os.ReadFile(string(l))
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("reading the access log: %v", err)
	}
	var recs []records.Record
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec records.Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			// The appliance writes whole lines; a partial last line is
			// still being written.
			break
		}
		recs = append(recs, rec)
	}
	return recs, string(data)
}

// await waits up to 5 s for a record that match accepts and returns it; it
// fails the test (showing every record) if none arrives.
func (l accessLog) await(t *testing.T, what string, match func(*records.Record) bool) *records.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs, data := l.read(t)
		for i := range recs {
			if match(&recs[i]) {
				return &recs[i]
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no access record for %s; the log:\n%s", what, data)
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// curlResult is a curl run: its exit code and output, and what -w
// reported.
type curlResult struct {
	cmdResult
	body        string
	status      int    // 0 without a response
	localPort   uint16 // the client's source port: the records' client_port
	httpVersion string
}

const curlMarker = "\n--curl-write-out-- "

// curl runs curl in namespace ns with args (besides -sS, a timeout and the
// write-out it parses).
func curl(ns string, args ...string) curlResult {
	r := inNS(ns, append([]string{"curl", "-sS", "--max-time", "10",
		"-w", curlMarker + "%{http_code} %{local_port} %{http_version}"}, args...)...)
	cr := curlResult{cmdResult: r, body: r.stdout}
	if i := strings.LastIndex(r.stdout, curlMarker); i >= 0 {
		cr.body = r.stdout[:i]
		f := strings.Fields(r.stdout[i+len(curlMarker):])
		if len(f) == 3 {
			cr.status, _ = strconv.Atoi(f[0])
			p, _ := strconv.Atoi(f[1])
			cr.localPort, cr.httpVersion = uint16(p), f[2]
		}
	}
	return cr
}

func (r curlResult) String() string {
	return fmt.Sprintf("status %d, local port %d, HTTP version %s, %s", r.status, r.localPort, r.httpVersion, r.cmdResult)
}

// sClient runs `openssl s_client -showcerts` in the client namespace
// against addr with extra args and returns the result and the certificates
// the server sent.
func sClient(t *testing.T, ns, addr string, args ...string) (cmdResult, []*x509.Certificate) {
	t.Helper()
	r := inNS(ns, append([]string{"openssl", "s_client", "-connect", addr, "-showcerts"}, args...)...)
	var chain []*x509.Certificate
	rest := []byte(r.stdout)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Errorf("openssl s_client showed a certificate that does not parse: %v", err)
			continue
		}
		chain = append(chain, c)
	}
	return r, chain
}

// fingerprint runs `openssl x509 -fingerprint -sha256` on a PEM file in ns
// and returns the subject and fingerprint lines.
func fingerprint(t *testing.T, ns, file string) (subject, fp string) {
	t.Helper()
	r := inNS(ns, "openssl", "x509", "-in", file, "-noout", "-subject", "-fingerprint", "-sha256")
	if r.code != 0 {
		t.Fatalf("openssl x509 -in %s: %s", file, r)
	}
	for _, l := range strings.Split(r.stdout, "\n") {
		if s, ok := strings.CutPrefix(l, "subject="); ok {
			subject = strings.TrimSpace(s)
		}
		if _, f, ok := strings.Cut(l, "Fingerprint="); ok {
			fp = strings.TrimSpace(f)
		}
	}
	if subject == "" || fp == "" {
		t.Fatalf("openssl x509 -in %s: no subject or fingerprint in %q", file, r.stdout)
	}
	return subject, fp
}

// opensslFingerprint formats the SHA-256 of der the way openssl prints it.
func opensslFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(hexes, ":")
}

func startInterceptAppliance(t *testing.T, tp *topology, name, bin, accessLogFile string, args ...string) *nsProc {
	t.Helper()
	app := startInNS(t, name, tp.app, nil, nil, nil, bin, append([]string{
		"--geneve-addr", "0.0.0.0:6081", "--admin-addr", netnsApplianceAddr + ":8080", "--gwlb-cidrs", netnsSimAddr + "/32",
		"--access-log", accessLogFile, "--drain-timeout", "3s", "--idle-timeout", "2s", "--dial-timeout", "3s",
		// The servers' DNS answers the origins' names: the destination
		// check (destination_check: dns) looks them up there.
		"--dns-resolver", netnsSrvAddr,
	}, args...)...)
	waitHealthy(t, tp, app)
	return app
}

// TestNetnsInterception shows the interception of the design ("Bump",
// "Deny", "HTTP", "CA-trust distribution") to real clients: curl, openssl
// s_client and a WebSocket client in the client namespace reach HTTPS
// origins in the servers' namespace only through gwlbsim and the real
// appliance, started with a policy (default bump, a denied and a spliced
// name), its own CA in --state-dir and the origins' CA as --upstream-ca.
func TestNetnsInterception(t *testing.T) {
	requireNetns(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		testenv.RequirePrivileged(t, "the interception namespace test needs openssl in PATH (apt-get install openssl)")
	}
	start := time.Now()
	applianceBin, simBin := buildBinaries(t)
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))

	setup := time.Now()
	origins := writeOrigins(t)
	tp := newTopology(t)
	startServers(t, tp.srv, netnsSrvAddr, netnsTLSEnv+"="+origins.dir)
	work := t.TempDir()
	polFile := filepath.Join(work, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(netnsInterceptPol), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(work, "state")
	accessRecs := accessLog(filepath.Join(work, "access.log"))
	app := startInterceptAppliance(t, tp, "gwlbproxy", applianceBin, string(accessRecs),
		"--config", polFile, "--upstream-ca", origins.caFile, "--state-dir", stateDir)
	sim := startInNS(t, "gwlbsim", tp.client, &lockedBuffer{}, nil, nil, simBin,
		"--addr", netnsSimAddr, "--appliance", netnsApplianceAddr, "--tun", netnsTUN, "--senders", "8")
	tp.routeClientThroughTUN(t, netnsTUN, sim)
	t.Logf("namespaces and processes ready in %s", time.Since(setup).Round(time.Millisecond))

	srv443 := netnsSrvAddr + ":443"
	resolve := func(name, port string) string { return name + ":" + port + ":" + netnsSrvAddr }
	byPort := func(kind string, port uint16) func(*records.Record) bool {
		return func(r *records.Record) bool { return r.Kind == kind && r.ClientPort == port }
	}

	// 1. The trust page through the data path serves the appliance's CA:
	// the same certificate as the admin listener's /ca.pem and the one
	// kept in --state-dir.
	caFile := filepath.Join(work, "ca.pem")
	var ourCA *x509.Certificate
	t.Run("TrustPage", func(t *testing.T) {
		r := curl(tp.client, "--resolve", resolve(netnsTrust, "80"), "http://"+netnsTrust+"/ca.pem", "-o", caFile)
		if r.code != 0 || r.status != 200 {
			t.Fatalf("fetching the CA from the trust host through the data path: %s", r)
		}
		subject, fp := fingerprint(t, tp.client, caFile)
		adminCA := filepath.Join(work, "admin-ca.pem")
		if r := inNS(tp.app, "curl", "-sS", "--max-time", "5", "-o", adminCA, netnsAdmin+"/ca.pem"); r.code != 0 {
			t.Fatalf("GET /ca.pem on the admin listener: %s", r)
		}
		adminSubject, adminFP := fingerprint(t, tp.app, adminCA)
		if fp != adminFP || subject != adminSubject {
			t.Errorf("the trust page through the data path serves %s (%s); the admin listener %s (%s)", subject, fp, adminSubject, adminFP)
		}
		if !strings.Contains(subject, certs.DefaultCommonName) {
			t.Errorf("the CA's subject %q: want the appliance's own CA (%q)", subject, certs.DefaultCommonName)
		}
		b, _ := pem.Decode(must(os.ReadFile(filepath.Join(stateDir, certs.CertFileName)))(t))
		if b == nil {
			t.Fatalf("no PEM in the state directory's %s", certs.CertFileName)
		}
		if want := opensslFingerprint(b.Bytes); fp != want {
			t.Errorf("the trust page's CA has fingerprint %s, the state directory's %s", fp, want)
		}
		b, _ = pem.Decode(must(os.ReadFile(caFile))(t))
		ourCA = must(x509.ParseCertificate(b.Bytes))(t)
		accessRecs.await(t, "GET /ca.pem from the trust host", func(rec *records.Record) bool {
			return byPort("http", r.localPort)(rec) && rec.Action == "allow" && rec.Rule == "trust-page" &&
				rec.Status == 200 && rec.Host == netnsTrust && rec.Path == "/ca.pem" && rec.DestPort == 80
		})
	})
	if ourCA == nil {
		t.Fatal("without the appliance's CA nothing else can be checked")
	}
	ourRoots := x509.NewCertPool()
	ourRoots.AddCert(ourCA)

	// 2. Bumped HTTPS, HTTP/1.1 and h2: the client trusts only our CA, the
	// origin answers, and each request and connection has its record.
	t.Run("Bump", func(t *testing.T) {
		for _, v := range []struct{ flag, curlVersion, originProto, alpn string }{
			{"--http1.1", "1.1", "HTTP/1.1", "http/1.1"},
			{"--http2", "2", "HTTP/2.0", "h2"},
		} {
			r := curl(tp.client, "-v", v.flag, "--cacert", caFile, "--resolve", resolve(netnsWWW, "443"),
				"-H", "Authorization: Bearer secret-bearer", "-H", "Cookie: session=secret-cookie",
				"https://"+netnsWWW+"/hello?token=secret")
			wantBody := fmt.Sprintf("hello from srv; you are %s:", netnsAppSrvAddr)
			if r.code != 0 || r.status != 200 || r.httpVersion != v.curlVersion || !strings.HasPrefix(r.body, wantBody) ||
				!strings.Contains(r.body, "; port 443; host "+netnsWWW+"; proto "+v.originProto+"\n") {
				t.Errorf("curl %s: want 200 over HTTP/%s, and the origin on port 443 saw host %s over %s; %s",
					v.flag, v.curlVersion, netnsWWW, v.originProto, r)
				continue
			}
			// curl verified the chain against our CA alone and says so.
			if !strings.Contains(r.stderr, "issuer: ") || !strings.Contains(r.stderr, "CN="+ourCA.Subject.CommonName) ||
				!strings.Contains(r.stderr, "subject: CN="+netnsWWW) || !strings.Contains(r.stderr, "SSL certificate verify ok") {
				t.Errorf("curl %s -v: want a verified leaf for %s issued by %q; %s", v.flag, netnsWWW, ourCA.Subject.CommonName, r)
			}
			accessRecs.await(t, "GET /hello "+v.flag, func(rec *records.Record) bool {
				return byPort("http", r.localPort)(rec) && rec.Action == "bump" && rec.Rule == "default" &&
					rec.Scheme == "https" && rec.Method == "GET" && rec.Host == netnsWWW && rec.Path == "/hello" &&
					rec.Status == 200 && rec.SNI == netnsWWW && rec.ALPN == v.alpn && rec.UpstreamVerify == "ok" &&
					rec.DestPort == 443 && rec.BytesIn > 0 && strings.HasPrefix(rec.UserAgent, "curl/")
			})
			accessRecs.await(t, "the bumped connection "+v.flag, func(rec *records.Record) bool {
				return byPort("tls", r.localPort)(rec) && rec.Action == "bump" && rec.Rule == "default" &&
					rec.SNI == netnsWWW && rec.ALPN == v.alpn && rec.UpstreamVerify == "ok" && rec.Result == "ok" &&
					rec.TLSVersion != "" && rec.TLSCipher != "" && rec.BytesIn > 0 && rec.BytesOut > 0
			})
		}
		// openssl verifies the same leaf against our CA, by name.
		r, chain := sClient(t, tp.client, srv443, "-servername", netnsWWW,
			"-CAfile", caFile, "-verify_return_error", "-verify_hostname", netnsWWW)
		if r.code != 0 || len(chain) == 0 {
			t.Fatalf("openssl s_client -servername %s: %s", netnsWWW, r)
		}
		leaf := chain[0]
		if leaf.Issuer.CommonName != ourCA.Subject.CommonName || !slices.Equal(leaf.DNSNames, []string{netnsWWW}) {
			t.Errorf("bumped leaf for %v issued by %q; want %s from %q", leaf.DNSNames, leaf.Issuer.CommonName, netnsWWW, ourCA.Subject.CommonName)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ourRoots, DNSName: netnsWWW}); err != nil {
			t.Errorf("the bumped leaf does not verify against the appliance's CA: %v", err)
		}
		// No query string, Authorization or Cookie, in any record.
		if _, data := accessRecs.read(t); strings.Contains(data, "secret") || strings.Contains(data, "token") {
			t.Errorf("the access log holds a query string or a credential:\n%s", data)
		}
		// A client that does not trust the appliance's CA refuses the
		// bumped connection: interception is never invisible to it.
		if cr := curl(tp.client, "--resolve", resolve(netnsWWW, "443"), "https://"+netnsWWW+"/hello"); cr.code != 60 {
			t.Errorf("curl without the appliance's CA: want exit 60 (certificate not trusted); %s", cr)
		}
	})

	// 3. A spliced name: the client sees the origin's own certificate,
	// byte for byte.
	t.Run("Splice", func(t *testing.T) {
		r, chain := sClient(t, tp.client, srv443, "-servername", netnsBank,
			"-CAfile", origins.caFile, "-verify_return_error", "-verify_hostname", netnsBank)
		if r.code != 0 || len(chain) == 0 {
			t.Fatalf("openssl s_client -servername %s, verifying against the upstream CA: %s", netnsBank, r)
		}
		if !bytes.Equal(chain[0].Raw, origins.leaf443.Raw) || chain[0].Issuer.CommonName != netnsUpstreamCN {
			t.Errorf("spliced: the client got a leaf for %v from %q, not the origin's own", chain[0].DNSNames, chain[0].Issuer.CommonName)
		}
		accessRecs.await(t, "the spliced connection", func(rec *records.Record) bool {
			return rec.Kind == "tls" && rec.SNI == netnsBank && rec.Action == "splice" && rec.Rule == "pass-bank" &&
				rec.Result == "ok" && rec.UpstreamVerify == "" && rec.BytesIn > 0
		})
	})

	// 4. A denied name: a TLS alert for HTTPS, a 403 naming the rule for
	// plain HTTP.
	t.Run("Deny", func(t *testing.T) {
		r := curl(tp.client, "--cacert", caFile, "--resolve", resolve(netnsEvil, "443"), "https://"+netnsEvil+"/")
		if r.code != 35 || !strings.Contains(r.stderr, "access denied") {
			t.Errorf("curl https://%s/: want exit 35 with an access_denied alert; %s", netnsEvil, r)
		}
		accessRecs.await(t, "the denied TLS connection", func(rec *records.Record) bool {
			return rec.Kind == "tls" && rec.SNI == netnsEvil && rec.Action == "deny" && rec.Rule == "no-evil" &&
				rec.Result == "denied" && rec.DestPort == 443 && rec.ClientPort == r.localPort
		})
		// A bumped connection to an allowed name cannot carry a request
		// for the denied one: each request is decided on its own Host
		// (h2's :authority here). Over HTTP/2 the 403 comes alone, no page:
		// the record names the rule.
		r = curl(tp.client, "--http2", "--cacert", caFile, "--resolve", resolve(netnsWWW, "443"),
			"-H", "Host: "+netnsEvil, "https://"+netnsWWW+"/hello")
		if r.code != 0 || r.status != 403 || r.body != "" {
			t.Errorf("a bumped %s connection carrying Host %s: want a 403 with no body; %s", netnsWWW, netnsEvil, r)
		}
		accessRecs.await(t, "the denied request on a bumped connection", func(rec *records.Record) bool {
			return byPort("http", r.localPort)(rec) && rec.Action == "deny" && rec.Rule == "no-evil" &&
				rec.Status == 403 && rec.Host == netnsEvil && rec.SNI == netnsWWW && rec.Scheme == "https"
		})
		r = curl(tp.client, "-H", "Host: "+netnsEvil, "http://"+netnsSrvAddr+"/")
		if r.code != 0 || r.status != 403 || !strings.Contains(r.body, "no-evil") {
			t.Errorf("plain HTTP with Host %s: want a 403 page naming rule no-evil; %s", netnsEvil, r)
		}
		accessRecs.await(t, "the denied HTTP request", func(rec *records.Record) bool {
			return byPort("http", r.localPort)(rec) && rec.Action == "deny" && rec.Rule == "no-evil" &&
				rec.Status == 403 && rec.Host == netnsEvil && rec.Result == "denied"
		})
	})

	// 5. An origin whose certificate no trusted root vouches for: the
	// client is refused, never shown a certificate of ours for it.
	t.Run("UnverifiedUpstream", func(t *testing.T) {
		r := curl(tp.client, "--cacert", caFile, "--resolve", resolve(netnsWWW, "8443"), "https://"+netnsWWW+":8443/hello")
		if r.code != 35 || !strings.Contains(r.stderr, "bad certificate") {
			t.Errorf("curl to the origin with an untrusted certificate: want exit 35 with a bad_certificate alert; %s", r)
		}
		accessRecs.await(t, "the unverified upstream", func(rec *records.Record) bool {
			return rec.Kind == "tls" && rec.DestPort == 8443 && rec.SNI == netnsWWW && rec.Action == "deny" &&
				rec.UpstreamVerify == "failed" && rec.Result == "denied" && strings.Contains(rec.Error, "unknown authority") &&
				rec.ClientPort == r.localPort
		})
	})

	// 6. Plain HTTP with a forged Host naming another server: the request
	// still reaches the original destination (were the Host dialled, the
	// TLS server on 8443 would answer "400 Bad Request").
	t.Run("ForgedHost", func(t *testing.T) {
		forged := netnsSrvAddr + ":8443"
		r := curl(tp.client, "-H", "Host: "+forged, "http://"+netnsSrvAddr+"/hello?token=secret")
		if r.code != 0 || r.status != 200 || !strings.Contains(r.body, "; port 80; host "+forged+"; proto HTTP/1.1\n") {
			t.Errorf("plain HTTP with Host %s: want the port 80 server to answer, seeing that Host; %s", forged, r)
		}
		accessRecs.await(t, "the forged-Host request", func(rec *records.Record) bool {
			return byPort("http", r.localPort)(rec) && rec.Action == "allow" && rec.Scheme == "http" &&
				rec.Host == forged && rec.Path == "/hello" && rec.Status == 200 && rec.DestPort == 80
		})
		if _, data := accessRecs.read(t); strings.Contains(data, "secret") {
			t.Errorf("the access log holds a query string:\n%s", data)
		}
	})

	// 7. A WebSocket through a bumped connection (curl 7.88 speaks no ws).
	t.Run("WebSocket", func(t *testing.T) {
		self := must(os.Executable())(t)
		r := inNS(tp.client, "env", netnsWSClientEnv+"="+srv443, netnsWSURLEnv+"=wss://"+netnsWWW+"/ws",
			netnsWSCAEnv+"="+caFile, self)
		if r.code != 0 || !strings.Contains(r.stdout, "echo two\n") || !strings.HasSuffix(r.stdout, "ok\n") ||
			!strings.Contains(r.stdout, "issuer "+ourCA.Subject.CommonName+"\n") {
			t.Fatalf("WebSocket echo through the appliance: %s", r)
		}
		var port uint16
		if m := regexp.MustCompile(`(?m)^local (\d+)$`).FindStringSubmatch(r.stdout); m != nil {
			p, _ := strconv.Atoi(m[1])
			port = uint16(p)
		}
		accessRecs.await(t, "the WebSocket", func(rec *records.Record) bool {
			return byPort("http", port)(rec) && rec.WebSocket && rec.Status == 101 && rec.Action == "bump" &&
				rec.Scheme == "https" && rec.Path == "/ws" && rec.Host == netnsWWW && rec.BytesIn > 3000 && rec.BytesOut > 3000
		})
	})

	// 8. No SNI: the upstream must prove the destination address (an IP
	// SAN). The origin's certificate names only www and bank, so the
	// appliance has nothing to vouch for and refuses the handshake, rather
	// than minting a leaf for names nobody asked for.
	t.Run("NoSNI", func(t *testing.T) {
		r, _ := sClient(t, tp.client, srv443, "-noservername", "-CAfile", caFile, "-verify_return_error")
		if r.code == 0 {
			t.Fatalf("openssl s_client -noservername: handshake succeeded; want it refused: %s", r)
		}
		accessRecs.await(t, "the refused connection without SNI", func(rec *records.Record) bool {
			return rec.Kind == "tls" && rec.SNI == "" && rec.DestPort == 443 && rec.Action == "deny" &&
				rec.UpstreamVerify == "failed" && strings.Contains(rec.Error, netnsSrvAddr)
		})
		// curl sends no SNI for an address: refused the same way.
		if cr := curl(tp.client, "--cacert", caFile, "https://"+srv443+"/hello"); cr.code == 0 {
			t.Errorf("curl https://%s/hello (no SNI): want a failed handshake; %s", srv443, cr)
		}
	})

	// 10. SIGHUP reloads the policy: new connections to www are denied,
	// and the appliance keeps serving.
	t.Run("Reload", func(t *testing.T) {
		pol := strings.Replace(netnsInterceptPol, "  rules:\n",
			"  rules:\n    - name: no-www\n      domains: [\"www.example.test\"]\n      action: deny\n", 1)
		if err := os.WriteFile(polFile, []byte(pol), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := app.signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(app.logs(), "policy reloaded"); time.Sleep(25 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no \"policy reloaded\" in the appliance's log 5s after SIGHUP:\n%s", app.logs())
			}
		}
		r := curl(tp.client, "--cacert", caFile, "--resolve", resolve(netnsWWW, "443"), "https://"+netnsWWW+"/hello")
		if r.code != 35 || !strings.Contains(r.stderr, "access denied") {
			t.Errorf("after the reload, curl https://%s/: want exit 35 with an access_denied alert; %s", netnsWWW, r)
		}
		accessRecs.await(t, "the connection denied by the reloaded policy", func(rec *records.Record) bool {
			return byPort("tls", r.localPort)(rec) && rec.SNI == netnsWWW && rec.Action == "deny" && rec.Rule == "no-www"
		})
		if app.exited() || healthCode(tp) != 200 {
			t.Errorf("the appliance stopped serving after SIGHUP:\n%s", app.logs())
		}
		// The rest of the policy still holds.
		r = curl(tp.client, "-H", "Host: "+netnsEvil, "http://"+netnsSrvAddr+"/")
		if r.status != 403 || !strings.Contains(r.body, "no-evil") {
			t.Errorf("after the reload, plain HTTP with Host %s: want a 403 naming no-evil; %s", netnsEvil, r)
		}
	})

	// Every record of the enforcing appliance names the flow as the GWLB
	// described it.
	recs, _ := accessRecs.read(t)
	cookie := regexp.MustCompile(`^[0-9a-f]{8}$`)
	for _, r := range recs {
		if r.Endpoint != netnsEndpoint || r.Attachment != netnsAttachment || !cookie.MatchString(r.FlowCookie) ||
			r.ClientIP != netnsClientAddr || r.DestIP != netnsSrvAddr {
			t.Errorf("record %+v: want endpoint %s, attachment %s, a flow cookie, client %s, destination %s",
				r, netnsEndpoint, netnsAttachment, netnsClientAddr, netnsSrvAddr)
		}
	}

	// 9. Audit mode: the appliance restarted with a policy that says bump
	// but audits, and no CA: nothing is decrypted.
	t.Run("Audit", func(t *testing.T) {
		if err := app.signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := app.wait(10 * time.Second); code != 0 {
			t.Fatalf("appliance exit code %d after SIGTERM, want 0:\n%s", code, app.logs())
		}
		auditPol := filepath.Join(work, "audit.yaml")
		if err := os.WriteFile(auditPol, []byte("policy: {mode: audit, default: bump}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		auditState := filepath.Join(work, "audit-state")
		auditLog := accessLog(filepath.Join(work, "audit.log"))
		startInterceptAppliance(t, tp, "gwlbproxy-audit", applianceBin, string(auditLog),
			"--config", auditPol, "--upstream-ca", origins.caFile, "--state-dir", auditState)
		if entries, _ := os.ReadDir(auditState); len(entries) > 0 {
			t.Errorf("audit mode created a CA: %s holds %d entries", auditState, len(entries))
		}
		if r := inNS(tp.app, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", netnsAdmin+"/ca.pem"); r.stdout != "404" {
			t.Errorf("audit mode: GET /ca.pem on the admin listener: want 404 (no CA); %s", r)
		}
		r, chain := sClient(t, tp.client, srv443, "-servername", netnsWWW,
			"-CAfile", origins.caFile, "-verify_return_error", "-verify_hostname", netnsWWW)
		if r.code != 0 || len(chain) == 0 {
			t.Fatalf("audit mode: openssl s_client -servername %s, verifying against the upstream CA: %s", netnsWWW, r)
		}
		if !bytes.Equal(chain[0].Raw, origins.leaf443.Raw) || chain[0].Issuer.CommonName == ourCA.Subject.CommonName {
			t.Errorf("audit mode: the client got a leaf from %q, not the origin's own", chain[0].Issuer.CommonName)
		}
		auditLog.await(t, "the audited connection", func(rec *records.Record) bool {
			return rec.Kind == "tls" && rec.SNI == netnsWWW && rec.Action == "splice" && rec.Rule == "default" &&
				rec.Result == "ok" && rec.BytesIn > 0
		})
		recs, data := auditLog.read(t)
		for _, rec := range recs {
			if rec.Action == "bump" || rec.UpstreamVerify != "" {
				t.Errorf("audit mode bumped a connection:\n%s", data)
				break
			}
		}
	})
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
