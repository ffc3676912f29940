package proxy

// Classification evasions, tried as a hostile client would try them, on the
// real TCP path (handleTCP: policy, dial, sniff, relay or intercept,
// records) over loopback sockets, without GENEVE or a packet stack. Each
// client shapes its first bytes so that a real server accepts them and a
// strict classifier calls them "other": relayed untouched, past every rule
// about names, and recorded as kind tcp.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// clsNames are the names the upstream TLS server has a certificate for.
var clsNames = []string{"denied.example", "allowed.example", "public.example", "ok.example", "mismatch.example"}

// clsRig is a Proxy with a policy, its records, and two destinations on
// loopback: an HTTPS server and a lenient cleartext HTTP server.
type clsRig struct {
	p         *Proxy
	recs      *clsSink
	upRoots   *x509.CertPool // trust the HTTPS destination
	ca        *certs.CA      // the appliance's interception CA
	tlsDest   netip.AddrPort
	plainDest netip.AddrPort
}

type clsOptions struct {
	bump   bool // the appliance has a CA
	check  func(ctx context.Context, endpoint, name string, dest netip.Addr) error
	config func(*Config) // changes the proxy's configuration, if set
}

func newClsRig(t *testing.T, doc string, o clsOptions) *clsRig {
	t.Helper()
	pol, err := policy.Parse("test.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	h := new(policy.Holder)
	h.Store(pol)
	r := &clsRig{recs: new(clsSink)}
	upCA := clsMust(certs.Generate("classify test upstream CA"))(t)
	leaf := clsMust(clsMust(certs.NewMinter(upCA, certs.MinterOptions{}))(t).LeafFor(clsNames, nil))(t)
	r.upRoots = x509.NewCertPool()
	r.upRoots.AddCert(upCA.Certificate())
	r.tlsDest = clsServeHTTPS(t, leaf)
	r.plainDest = clsServeLenientHTTP(t)
	cfg := Config{
		Records: records.NewWriter(nil, r.recs), Policy: h, AllowLoopback: true,
		DialTimeout: 3 * time.Second, DestinationCheck: o.check,
		Intercept: intercept.Config{UpstreamRoots: r.upRoots},
	}
	if o.bump {
		r.ca = clsMust(certs.Generate("classify test appliance CA"))(t)
		cfg.Intercept.Minter = clsMust(certs.NewMinter(r.ca, certs.MinterOptions{}))(t)
	}
	if o.config != nil {
		o.config(&cfg)
	}
	r.p = New(cfg)
	t.Cleanup(func() {
		_ = r.p.Wait(clsCtx(t, 5*time.Second))
		r.p.Close()
	})
	return r
}

// dial connects a client to dest through the proxy, as the netstack would
// hand the connection over; it returns the client's end.
func (r *clsRig) dial(t *testing.T, dest netip.AddrPort) *net.TCPConn {
	client, proxySide := testnet.TCPPair(t)
	flow := netstack.FlowInfo{
		Endpoint: 0x0123456789abcdef, Attachment: 0x1111222233334444, FlowCookie: 0xabcd,
		Client: client.LocalAddr().(*net.TCPAddr).AddrPort(), Dest: dest,
	}
	go r.p.handleTCP(flow, &clsAcceptor{conn: proxySide})
	client.SetDeadline(time.Now().Add(10 * time.Second))
	return client
}

// record waits for the record of kind from the client's port, failing t,
// the (sub)test that asks.
func (r *clsRig) record(t *testing.T, c net.Conn, kind string) records.Record {
	t.Helper()
	port := c.LocalAddr().(*net.TCPAddr).AddrPort().Port()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, rec := range r.recs.parse(t) {
			if rec.ClientPort == port && rec.Kind == kind {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s record from port %d; records:\n%s", kind, port, r.recs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// clsAcceptor hands the proxy its end of a loopback connection; Reject
// resets it, as the netstack answers a refused SYN.
type clsAcceptor struct{ conn *net.TCPConn }

func (a *clsAcceptor) Accept() (net.Conn, error) { return a.conn, nil }
func (a *clsAcceptor) Reject()                   { _ = a.conn.SetLinger(0); a.conn.Close() }

// clsSink collects records.
type clsSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *clsSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(b)
}

func (s *clsSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *clsSink) parse(t *testing.T) []records.Record {
	t.Helper()
	var out []records.Record
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var r records.Record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("record %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

func clsMust[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func clsCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// clsServeHTTPS serves HTTPS on loopback with leaf, answering with the
// Host it was asked for.
func clsServeHTTPS(t *testing.T, leaf *tls.Certificate) netip.AddrPort {
	ln := clsMust(tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}}))(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello host=%s", r.Host)
	}), ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// clsServeLenientHTTP is a cleartext HTTP server as lenient as nginx about
// what the policy cares for: it skips blank lines before the request line,
// takes any request line, and answers with the Host header it found.
func clsServeLenientHTTP(t *testing.T) netip.AddrPort {
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		var line, host string
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			l = strings.TrimRight(l, "\r\n")
			switch {
			case line == "" && l == "": // a blank line before the request: skipped
				continue
			case line == "":
				line = l
				continue
			case l == "":
			default:
				if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "host") {
					host = strings.TrimSpace(v)
				}
				continue
			}
			break
		}
		body := fmt.Sprintf("hello host=%s line=%q", host, line)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// clsShape is how a hostile client sends its ClientHello: the record
// version it writes, and records it sends first.
type clsShape struct {
	version uint16
	before  []byte
}

// clsWarningAlert is a warning-level alert record (user_canceled), which
// crypto/tls and OpenSSL servers drop before the ClientHello.
var clsWarningAlert = []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 90}

// clsHelloShapes are the ways to send a real ClientHello that servers accept
// and the classifier once called "other".
var clsHelloShapes = []struct {
	name string
	conn clsShape
}{
	{"record version 0x0305", clsShape{version: 0x0305}},
	{"record version 0x0000", clsShape{version: 0x0000}},
	{"warning alert first", clsShape{version: 0x0301, before: clsWarningAlert}},
}

// clsHandshake runs a crypto/tls client over c, shaped by shape.
func clsHandshake(c net.Conn, shape clsShape, cfg *tls.Config) (*tls.Conn, error) {
	tc := tls.Client(testnet.RewriteFirstRecord(c, shape.version, shape.before), cfg)
	return tc, tc.Handshake()
}

// clsGet sends GET / for host over c and returns the body.
func clsGet(c net.Conn, host string) (string, error) {
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

const clsDenyByName = `
policy:
  default: allow
  rules:
    - name: no-denied
      domains: ["denied.example"]
      action: deny
`

// A ClientHello for a denied name, with its first record's version
// rewritten or after a warning alert: denied on its SNI, and recorded as
// TLS with it.
func TestEvasionHelloShapesDeniedBySNI(t *testing.T) {
	r := newClsRig(t, clsDenyByName, clsOptions{})
	for _, shape := range clsHelloShapes {
		t.Run(shape.name, func(t *testing.T) {
			c := r.dial(t, r.tlsDest)
			defer c.Close()
			_, err := clsHandshake(c, shape.conn, &tls.Config{ServerName: "denied.example", RootCAs: r.upRoots})
			if err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Errorf("clsHandshake: %v, want an access_denied alert", err)
			}
			rec := r.record(t, c, "tls")
			if rec.Action != "deny" || rec.Rule != "no-denied" || rec.SNI != "denied.example" || rec.Result != "denied" {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

// An SNI with an empty label: "denied.example.." would not meet the rule
// for denied.example (rules ignore one trailing dot), and a server may
// read it as that name; ".denied.example" and "a..denied.example" are no
// names. Each is an unreadable ClientHello, refused with a
// handshake_failure alert. crypto/tls strips trailing dots before sending,
// so the client sends a crypto/tls ClientHello with the name's bytes
// swapped in (same length, every length field still right).
func TestEvasionSNIEmptyLabel(t *testing.T) {
	r := newClsRig(t, clsDenyByName, clsOptions{})
	for _, name := range []string{"denied.example..", ".denied.example", "a..denied.example"} {
		stand := strings.Repeat("x", len(name)-len(".example")) + ".example"
		hello := clsCaptureHello(t, &tls.Config{ServerName: stand})
		if bytes.Count(hello, []byte(stand)) != 1 {
			t.Fatalf("%s: the captured hello holds %q %d times", name, stand, bytes.Count(hello, []byte(stand)))
		}
		hello = bytes.Replace(hello, []byte(stand), []byte(name), 1)
		c := r.dial(t, r.tlsDest)
		_, _ = c.Write(hello)
		got, _ := io.ReadAll(c)
		if len(got) < 7 || got[0] != 0x15 || got[6] != intercept.AlertHandshakeFailure {
			t.Errorf("%s: got %q, want a handshake_failure alert", name, got)
		}
		rec := r.record(t, c, "tls")
		if rec.Action != "deny" || rec.Result != "denied" || !strings.HasPrefix(rec.Error, "ClientHello could not be read") ||
			!strings.Contains(rec.Error, "invalid host_name") {
			t.Errorf("%s: record %+v", name, rec)
		}
		c.Close()
	}
}

// clsCaptureHello returns the first record a crypto/tls client sends.
func clsCaptureHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() { _ = tls.Client(c, cfg).Handshake(); c.Close() }()
	head := make([]byte, 5)
	if _, err := io.ReadFull(s, head); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(head[3])<<8|int(head[4]))
	if _, err := io.ReadFull(s, body); err != nil {
		t.Fatal(err)
	}
	return append(head, body...)
}

// The same shapes under a bump policy are bumped: the client gets the
// appliance's leaf, and its request is inspected.
func TestEvasionHelloShapesBumped(t *testing.T) {
	r := newClsRig(t, "policy: {default: bump}\n", clsOptions{bump: true})
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Certificate())
	for _, shape := range clsHelloShapes {
		t.Run(shape.name, func(t *testing.T) {
			c := r.dial(t, r.tlsDest)
			defer c.Close()
			tc, err := clsHandshake(c, shape.conn, &tls.Config{ServerName: "allowed.example", RootCAs: roots})
			if err != nil {
				t.Fatalf("clsHandshake with the appliance's CA trusted: %v (relayed, not bumped?)", err)
			}
			if body, err := clsGet(tc, "allowed.example"); err != nil || body != "hello host=allowed.example" {
				t.Errorf("GET through the bump: %q, %v", body, err)
			}
			tc.Close()
			rec := r.record(t, c, "tls")
			if rec.Action != "bump" || rec.SNI != "allowed.example" || rec.UpstreamVerify != "ok" {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

// A blank line before the request line (RFC 9112 §2.2: servers ignore it)
// for a denied Host: denied with a 403 on that Host. An allowed Host with
// blank lines before it is served, the blank lines dropped.
func TestEvasionBlankLineBeforeRequest(t *testing.T) {
	r := newClsRig(t, clsDenyByName, clsOptions{})
	for _, blank := range []string{"\r\n", "\n", "\r\n\r\n\n"} {
		c := r.dial(t, r.plainDest)
		fmt.Fprintf(c, "%sGET / HTTP/1.1\r\nHost: denied.example\r\n\r\n", blank)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%q: %v", blank, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusForbidden || strings.Contains(string(body), "hello") {
			t.Errorf("%q then a denied Host: %d %q, want 403 from the appliance", blank, resp.StatusCode, body)
		}
		if rec := r.record(t, c, "http"); rec.Action != "deny" || rec.Host != "denied.example" || rec.Rule != "no-denied" || rec.Status != 403 {
			t.Errorf("%q: record %+v", blank, rec)
		}
		c.Close()
	}
	c := r.dial(t, r.plainDest)
	defer c.Close()
	fmt.Fprintf(c, "\r\n\r\nGET /x HTTP/1.1\r\nHost: allowed.example\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "hello host=allowed.example") {
		t.Errorf("blank lines, then an allowed Host: %d %q", resp.StatusCode, body)
	}
	if rec := r.record(t, c, "http"); rec.Action != "allow" || rec.Host != "allowed.example" || rec.Path != "/x" {
		t.Errorf("record %+v", rec)
	}
}

// Bytes that start like TLS or HTTP but cannot be read: refused, with the
// reason, when the policy has rules about names; relayed as TCP when it
// has only addresses and ports.
func TestUnreadableFailsClosed(t *testing.T) {
	unreadable := []struct {
		name, in, kind, reason string
		tls                    bool
	}{
		{"record too long", "\x16\x03\x07junk and more", "tls", "ClientHello could not be read", true},
		{"alert, then not TLS", string(clsWarningAlert) + "GET / HTTP/1.1\r\n\r\n", "tls", "ClientHello could not be read", true},
		// An SSLv2-format ClientHello offering TLS 1.2, which OpenSSL
		// answers with a ServerHello: it names no host.
		{"SSLv2-format hello", "\x80\x1c\x01\x03\x03\x00\x03\x00\x00\x00\x10\x00\x00\x2f" + strings.Repeat("\xaa", 16), "tls", "ClientHello could not be read: sniff: SSLv2-format", true},
		{"two spaces", "GET  / HTTP/1.1\r\nHost: denied.example\r\n\r\n", "http", "request head could not be read", false},
		{"blank line, space after version", "\r\nGET / HTTP/1.1 \r\nHost: denied.example\r\n\r\n", "http", "request head could not be read", false},
		// Python's http.server splits the line on any whitespace, and
		// drops it before the method.
		{"tab after the method", "GET\t/ HTTP/1.1\r\nHost: denied.example\r\n\r\n", "http", "request head could not be read", false},
		{"space before the method", " GET / HTTP/1.1\r\nHost: denied.example\r\n\r\n", "http", "request head could not be read", false},
		{"vertical tab after the method", "GET\v/ HTTP/1.1\r\nHost: denied.example\r\n\r\n", "http", "request head could not be read", false},
		{"no-break space before the method", "\xa0GET / HTTP/1.1\r\nHost: denied.example\r\n\r\n", "http", "request head could not be read", false},
	}
	t.Run("names matter", func(t *testing.T) {
		r := newClsRig(t, clsDenyByName, clsOptions{})
		for _, u := range unreadable {
			dest := r.plainDest
			c := r.dial(t, dest)
			io.WriteString(c, u.in)
			got, _ := io.ReadAll(c)
			switch {
			case u.tls && (len(got) < 7 || got[0] != 0x15 || got[6] != intercept.AlertHandshakeFailure):
				t.Errorf("%s: got %q, want a handshake_failure alert", u.name, got)
			case !u.tls:
				resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
				if err != nil || resp.StatusCode != http.StatusBadRequest {
					t.Errorf("%s: got %q, want a 400", u.name, got)
					break
				}
				if body, err := io.ReadAll(resp.Body); err != nil || !strings.Contains(string(body), "could not be read") {
					t.Errorf("%s: 400 with body %q, %v", u.name, body, err)
				}
			}
			rec := r.record(t, c, u.kind)
			if rec.Action != "deny" || rec.Result != "denied" || !strings.HasPrefix(rec.Error, u.reason) {
				t.Errorf("%s: record %+v", u.name, rec)
			}
			c.Close()
		}
	})
	t.Run("addresses only", func(t *testing.T) {
		r := newClsRig(t, "policy:\n  default: allow\n  rules:\n    - {name: no-nets, dest_cidrs: [10.0.0.0/8], action: deny}\n", clsOptions{})
		for _, u := range unreadable {
			if u.tls {
				continue // the lenient HTTP server would wait for a line
			}
			c := r.dial(t, r.plainDest)
			io.WriteString(c, u.in)
			c.CloseWrite()
			got, _ := io.ReadAll(c)
			if !strings.Contains(string(got), "hello host=denied.example") {
				t.Errorf("%s: got %q, want it relayed to the destination", u.name, got)
			}
			if rec := r.record(t, c, "tcp"); rec.Action != "allow" || rec.Error != "" {
				t.Errorf("%s: record %+v", u.name, rec)
			}
			c.Close()
		}
	})
}

// clsECHConfigList returns an ECHConfigList (RFC 9849 §4) with one X25519,
// HKDF-SHA256, AES-128-GCM configuration for publicName.
func clsECHConfigList(t *testing.T, publicName string) []byte {
	key := clsMust(ecdh.X25519().GenerateKey(rand.Reader))(t)
	u16 := func(n int) []byte { return []byte{byte(n >> 8), byte(n)} }
	vec16 := func(b []byte) []byte { return append(u16(len(b)), b...) }
	c := slices.Concat([]byte{7}, u16(0x20), vec16(key.PublicKey().Bytes()), vec16(slices.Concat(u16(1), u16(1))),
		[]byte{0, byte(len(publicName))}, []byte(publicName), u16(0))
	return vec16(slices.Concat(u16(0xfe0d), vec16(c)))
}

// A client offering Encrypted Client Hello: refused under ech: deny, and
// recorded with ech: true whether spliced, bumped or refused.
func TestECH(t *testing.T) {
	echCfg := func(t *testing.T, roots *x509.CertPool) *tls.Config {
		return &tls.Config{ServerName: "secret.example", MinVersion: tls.VersionTLS13, RootCAs: roots,
			EncryptedClientHelloConfigList: clsECHConfigList(t, "public.example")}
	}
	t.Run("deny", func(t *testing.T) {
		r := newClsRig(t, "policy: {default: allow, ech: deny}\n", clsOptions{})
		c := r.dial(t, r.tlsDest)
		defer c.Close()
		if _, err := clsHandshake(c, clsShape{version: 0x0301}, echCfg(t, r.upRoots)); err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("clsHandshake: %v, want access_denied", err)
		}
		rec := r.record(t, c, "tls")
		if rec.Action != "deny" || !rec.ECH || rec.SNI != "public.example" || rec.Error != "ClientHello offers ECH; policy ech: deny" {
			t.Errorf("record %+v", rec)
		}
		// Without ECH the same policy lets the client through.
		c2 := r.dial(t, r.tlsDest)
		defer c2.Close()
		if _, err := clsHandshake(c2, clsShape{version: 0x0301}, &tls.Config{ServerName: "public.example", RootCAs: r.upRoots}); err != nil {
			t.Errorf("without ECH: %v", err)
		}
		c2.Close()
		if rec := r.record(t, c2, "tls"); rec.Action != "splice" || rec.ECH {
			t.Errorf("without ECH: record %+v", rec)
		}
	})
	t.Run("splice", func(t *testing.T) {
		r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
		c := r.dial(t, r.tlsDest)
		defer c.Close()
		// The destination has no ECH keys: it answers for the public name,
		// and the client gives up. The record still says what was offered.
		_, err := clsHandshake(c, clsShape{version: 0x0301}, echCfg(t, r.upRoots))
		var rej *tls.ECHRejectionError
		if !errors.As(err, &rej) {
			t.Errorf("clsHandshake: %v, want the destination's ECH rejection", err)
		}
		c.Close()
		if rec := r.record(t, c, "tls"); rec.Action != "splice" || !rec.ECH || rec.SNI != "public.example" {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("bump", func(t *testing.T) {
		r := newClsRig(t, "policy: {default: bump}\n", clsOptions{bump: true})
		roots := x509.NewCertPool()
		roots.AddCert(r.ca.Certificate())
		c := r.dial(t, r.tlsDest)
		defer c.Close()
		_, _ = clsHandshake(c, clsShape{version: 0x0301}, echCfg(t, roots)) // rejected ECH: the client gives up
		c.Close()
		if rec := r.record(t, c, "tls"); rec.Action != "bump" || !rec.ECH {
			t.Errorf("record %+v", rec)
		}
	})
}

// clsDestChecker is a DestinationCheck that vouches for ok.example only, and
// remembers what it was asked.
type clsDestChecker struct {
	mu    sync.Mutex
	calls []string
}

func (d *clsDestChecker) check(ctx context.Context, endpoint, name string, dest netip.Addr) error {
	d.mu.Lock()
	d.calls = append(d.calls, endpoint+" "+name+" "+dest.String())
	d.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		return errors.New("no deadline on the check")
	}
	if name == "ok.example" {
		return nil
	}
	return fmt.Errorf("%s is not an address of %s (resolves to 192.0.2.1)", dest, name)
}

func (d *clsDestChecker) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.calls)
}

const clsSpliceByName = `
policy:
  mode: %s
  default: %s
  rules:
    - name: by-name
      domains: ["ok.example", "mismatch.example"]
      action: %s
`

// A TLS connection spliced because of its SNI goes on only if the
// destination is an address of the name; in audit mode a mismatch is
// recorded and the connection goes on.
func TestDestinationCheckSplice(t *testing.T) {
	t.Run("enforce", func(t *testing.T) {
		dc := new(clsDestChecker)
		r := newClsRig(t, fmt.Sprintf(clsSpliceByName, "enforce", "deny", "splice"), clsOptions{check: dc.check})
		c := r.dial(t, r.tlsDest)
		tc, err := clsHandshake(c, clsShape{version: 0x0301}, &tls.Config{ServerName: "ok.example", RootCAs: r.upRoots})
		if err != nil {
			t.Fatalf("a name the destination is an address of: %v", err)
		}
		if body, err := clsGet(tc, "ok.example"); err != nil || body != "hello host=ok.example" {
			t.Errorf("GET: %q, %v", body, err)
		}
		c.Close() // a spliced connection's record is written when it ends
		// Closing with a session ticket unread may reset the relay: only the
		// check's own verdict is asserted.
		if rec := r.record(t, c, "tls"); rec.Action != "splice" || rec.DestCheck != "ok" || strings.Contains(rec.Error, "not an address") {
			t.Errorf("record %+v", rec)
		}
		c = r.dial(t, r.tlsDest)
		if _, err := clsHandshake(c, clsShape{version: 0x0301}, &tls.Config{ServerName: "mismatch.example", RootCAs: r.upRoots}); err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("a name the destination is not an address of: %v, want access_denied", err)
		}
		want := fmt.Sprintf("%s is not an address of mismatch.example (resolves to 192.0.2.1)", r.tlsDest.Addr())
		if rec := r.record(t, c, "tls"); rec.Action != "deny" || rec.Result != "denied" || rec.DestCheck != "mismatch" || rec.Error != want || rec.SNI != "mismatch.example" {
			t.Errorf("record %+v; want a deny saying %q", rec, want)
		}
		if dc.count() != 2 || !strings.HasPrefix(dc.calls[1], "vpce-00123456789abcdef mismatch.example 127.0.0.1") {
			t.Errorf("checks: %q", dc.calls)
		}
	})
	t.Run("audit", func(t *testing.T) {
		dc := new(clsDestChecker)
		r := newClsRig(t, fmt.Sprintf(clsSpliceByName, "audit", "deny", "splice"), clsOptions{check: dc.check})
		c := r.dial(t, r.tlsDest)
		tc, err := clsHandshake(c, clsShape{version: 0x0301}, &tls.Config{ServerName: "mismatch.example", RootCAs: r.upRoots})
		if err != nil {
			t.Fatalf("audit mode: %v, want the connection through", err)
		}
		if body, err := clsGet(tc, "mismatch.example"); err != nil || body != "hello host=mismatch.example" {
			t.Errorf("GET: %q, %v", body, err)
		}
		c.Close()
		if rec := r.record(t, c, "tls"); rec.Action != "splice" || rec.DestCheck != "mismatch" || !strings.Contains(rec.Error, "is not an address of mismatch.example") {
			t.Errorf("record %+v", rec)
		}
	})
	// Not checked: a decision that is not about the name (the default),
	// destination_check off. Checked: a bump, by the interceptor before its
	// own ClientHello carries the SNI to the destination (its certificate
	// would prove the name, but only after the name has gone); a bump the
	// appliance cannot do (no CA), spliced.
	for _, tc := range []struct {
		name, doc string
		bump      bool
		sni       string
		checks    int
		ok        bool
	}{
		{"default rule", fmt.Sprintf(clsSpliceByName, "enforce", "allow", "splice"), false, "allowed.example", 0, true},
		{"bump", fmt.Sprintf(clsSpliceByName, "enforce", "deny", "bump"), true, "mismatch.example", 1, false},
		{"check off", strings.Replace(fmt.Sprintf(clsSpliceByName, "enforce", "deny", "splice"), "  rules:", "  destination_check: off\n  rules:", 1), false, "mismatch.example", 0, true},
		{"bump without a CA", fmt.Sprintf(clsSpliceByName, "enforce", "deny", "bump"), false, "mismatch.example", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc := new(clsDestChecker)
			r := newClsRig(t, tc.doc, clsOptions{check: dc.check, bump: tc.bump})
			roots := r.upRoots
			if tc.bump {
				roots = x509.NewCertPool()
				roots.AddCert(r.ca.Certificate())
			}
			c := r.dial(t, r.tlsDest)
			defer c.Close()
			tlsc, err := clsHandshake(c, clsShape{version: 0x0301}, &tls.Config{ServerName: tc.sni, RootCAs: roots})
			if (err == nil) != tc.ok {
				t.Fatalf("clsHandshake: %v, want success %v", err, tc.ok)
			}
			if err == nil {
				tlsc.Close()
			}
			rec := r.record(t, c, "tls")
			if dc.count() != tc.checks || (tc.checks == 0 && rec.DestCheck != "") {
				t.Errorf("%d checks (%q), record %+v; want %d", dc.count(), dc.calls, rec, tc.checks)
			}
			if tc.checks == 1 && (rec.DestCheck != "mismatch" || rec.Action != "deny" || !strings.Contains(rec.Error, "is not an address of") ||
				tc.bump == strings.Contains(rec.Error, "no CA")) {
				t.Errorf("record %+v", rec)
			}
		})
	}
}
