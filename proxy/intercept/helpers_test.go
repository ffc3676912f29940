package intercept_test

import (
	"bufio"
	"bytes"
	"context"
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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// The flow every test session pretends to be: the addresses only reach the
// policy and the records. No connection ever goes to them: the upstream is
// one end of a pipe, and Config.Dial records what it is asked for and hands
// out only the connections a test offered (rig.offerRedial).
var (
	testClient   = netip.MustParseAddr("198.51.100.7")
	tlsDest      = netip.MustParseAddrPort("192.0.2.10:443")
	httpDest     = netip.MustParseAddrPort("192.0.2.10:80")
	testEndpoint = "vpce-0123456789abcdef0"
)

const testClientPort = 40000

// testPolicy bumps TLS (allows HTTP) except for one denied name.
const testPolicy = `
policy:
  default: bump
  rules:
    - name: no-evil
      domains: ["evil.example.test"]
      action: deny
`

// waitLimit bounds every wait of a test that works: far more than any step
// needs, and it only ever runs out when something is broken.
const waitLimit = 5 * time.Second

// recordLog is the records writer's sink: written by its goroutine, read by
// the test.
type recordLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *recordLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

// rig is one Interceptor with its CA, policy, records and the upstream's CA.
type rig struct {
	t      testing.TB
	ca     *certs.CA // the appliance's: clients trust it
	upCA   *certs.CA // the upstreams': the interceptor trusts it
	upMint *certs.Minter
	pol    *policy.Policy
	w      *records.Writer
	log    *recordLog
	ic     *intercept.Interceptor
	dials  atomic.Int32 // attempts to open another upstream connection
	// held is what the sessions say they hold for their clients outside
	// the stack (AddHeld), all clients together.
	held atomic.Int64

	mu        sync.Mutex
	sessions  []*served
	dialAddrs []string   // what Config.Dial was asked for
	redials   []net.Conn // what it returns, in turn; then an error
}

func newRig(t testing.TB, policyDoc string, configure ...func(*intercept.Config)) *rig {
	t.Helper()
	r := &rig{t: t, log: &recordLog{}}
	var err error
	if r.ca, err = certs.Generate("intercept test CA"); err != nil {
		t.Fatal(err)
	}
	minter, err := certs.NewMinter(r.ca, certs.MinterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.upCA, err = certs.Generate("upstream test CA"); err != nil {
		t.Fatal(err)
	}
	if r.upMint, err = certs.NewMinter(r.upCA, certs.MinterOptions{}); err != nil {
		t.Fatal(err)
	}
	if r.pol, err = policy.Parse("policy.yaml", []byte(policyDoc)); err != nil {
		t.Fatal(err)
	}
	r.w = records.NewWriter(nil, r.log)
	roots := x509.NewCertPool()
	roots.AddCert(r.upCA.TrustAnchor())
	cfg := intercept.Config{
		Records:          r.w,
		Minter:           minter,
		UpstreamRoots:    roots,
		HandshakeTimeout: 2 * time.Second,
		Dial: func(_ context.Context, addr string) (net.Conn, error) {
			r.dials.Add(1)
			r.mu.Lock()
			defer r.mu.Unlock()
			r.dialAddrs = append(r.dialAddrs, addr)
			if len(r.redials) == 0 {
				return nil, errors.New("test: no further upstream connection to give")
			}
			c := r.redials[0]
			r.redials = r.redials[1:]
			return c, nil
		},
	}
	for _, f := range configure {
		f(&cfg)
	}
	r.ic = intercept.New(cfg)
	// Registered first, so it runs last: after every connection is closed.
	t.Cleanup(func() {
		r.mu.Lock()
		sessions := r.sessions
		r.mu.Unlock()
		for _, sv := range sessions {
			select { // Serve's goroutine must not outlive the test
			case <-sv.returned:
			case <-time.After(waitLimit):
				t.Errorf("Serve has not returned")
			}
			if n := sv.doneN.Load(); n > 1 {
				t.Errorf("Done called %d times", n)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		r.w.Close(ctx)
	})
	return r
}

// caPool holds what a client that trusts the appliance trusts.
func (r *rig) caPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(r.ca.TrustAnchor())
	return pool
}

// upLeaf is a certificate for name from the CA the interceptor trusts;
// name may be a wildcard (LeafFor mints those, Leaf does not).
func (r *rig) upLeaf(name string) *tls.Certificate {
	r.t.Helper()
	leaf, err := r.upMint.LeafFor([]string{name}, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	return leaf
}

// strangerLeaf is a certificate for name from a CA nobody trusts.
func (r *rig) strangerLeaf(name string) *tls.Certificate {
	r.t.Helper()
	ca, err := certs.Generate("stranger CA")
	if err != nil {
		r.t.Fatal(err)
	}
	m, err := certs.NewMinter(ca, certs.MinterOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	leaf, err := m.Leaf(name)
	if err != nil {
		r.t.Fatal(err)
	}
	return leaf
}

// offerRedial makes c the upstream connection Config.Dial returns next.
func (r *rig) offerRedial(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.redials = append(r.redials, c)
}

// dialed returns the addresses Config.Dial was asked for.
func (r *rig) dialed() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.dialAddrs...)
}

// records flushes the writer and returns every record written so far.
func (r *rig) records() []records.Record {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := r.w.Flush(ctx); err != nil {
		r.t.Fatal(err)
	}
	r.log.mu.Lock()
	data := bytes.Clone(r.log.buf.Bytes())
	r.log.mu.Unlock()
	var out []records.Record
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var rec records.Record
		if err := json.Unmarshal(line, &rec); err != nil {
			r.t.Fatalf("record %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// ofKind returns the records of kind, in the order written.
func ofKind(recs []records.Record, kind string) []records.Record {
	var out []records.Record
	for _, rec := range recs {
		if rec.Kind == kind {
			out = append(out, rec)
		}
	}
	return out
}

// served is a session handed to the interceptor.
type served struct {
	done     chan struct{} // closed by the first Done
	doneN    atomic.Int32
	once     sync.Once
	returned chan struct{} // closed when Serve has returned
}

func (sv *served) doneFunc() {
	sv.doneN.Add(1)
	sv.once.Do(func() { close(sv.done) })
}

// notDone fails the test if Done is called within a short while: the
// session must go on while its client is still connected.
func (sv *served) notDone(t *testing.T) {
	t.Helper()
	select {
	case <-sv.done:
		t.Fatal("Done called while the client is still connected")
	case <-time.After(50 * time.Millisecond):
	}
}

// waitDoneOnce waits for Done, then makes sure no second call follows.
func (sv *served) waitDoneOnce(t *testing.T) {
	t.Helper()
	select {
	case <-sv.done:
	case <-time.After(waitLimit):
		t.Fatal("Done not called")
	}
	time.Sleep(50 * time.Millisecond) // time for a stray second call
	if n := sv.doneN.Load(); n != 1 {
		t.Fatalf("Done called %d times", n)
	}
}

// connect returns the client's end of a new connection whose other end is
// classified the way package proxy classifies it (sniff.Sniff, then the
// policy for a ClientHello) and handed to the interceptor, with upEnd as its
// upstream connection.
func (r *rig) connect(upEnd net.Conn, dest netip.AddrPort) (net.Conn, *served) {
	client, proxySide := net.Pipe()
	return client, r.serve(client, proxySide, upEnd, dest)
}

// connectTCP is connect over loopback TCP: for a client that half-closes,
// or whose writes must not wait for the interceptor to read (a pipe has no
// buffer).
func (r *rig) connectTCP(upEnd net.Conn, dest netip.AddrPort) (*net.TCPConn, *served) {
	client, proxySide := testnet.TCPPair(r.t)
	return client, r.serve(client, proxySide, upEnd, dest)
}

// listenOnce returns a loopback listener whose first connection the
// interceptor serves, with upEnd as its upstream, as connect does: for a
// client that dials for itself (curl, net/http's client). The listener is
// closed when the test ends.
func (r *rig) listenOnce(upEnd net.Conn, dest netip.AddrPort) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r.serve(c, c, upEnd, dest)
	}()
	return ln
}

// serve serves proxySide, the interceptor's end of client's connection.
func (r *rig) serve(client, proxySide, upEnd net.Conn, dest netip.AddrPort) *served {
	r.t.Cleanup(func() { client.Close(); proxySide.Close(); upEnd.Close() })
	sv := &served{done: make(chan struct{}), returned: make(chan struct{})}
	r.mu.Lock()
	r.sessions = append(r.sessions, sv)
	r.mu.Unlock()
	t := r.t
	go func() {
		defer close(sv.returned)
		br := sniff.NewReader(proxySide)
		res, err := sniff.Sniff(br, proxySide)
		if err != nil {
			t.Errorf("sniff: %v", err)
			proxySide.Close()
			upEnd.Close()
			return
		}
		subj := policy.Subject{Dest: dest, Client: testClient, Endpoint: testEndpoint}
		rec := &records.Record{
			Kind: "tcp", Action: "allow", Rule: policy.DefaultRule, Policy: r.pol.ID(), Endpoint: testEndpoint,
			ClientIP: testClient.String(), ClientPort: testClientPort,
			DestIP: dest.Addr().String(), DestPort: dest.Port(), Result: "ok",
		}
		s := &intercept.Session{
			Client: &peekedConn{Conn: proxySide, r: br, held: &r.held}, Upstream: upEnd, Policy: r.pol,
			Record: rec, Start: time.Now(), Done: sv.doneFunc,
		}
		switch res.Kind {
		case sniff.KindTLS:
			if res.Err != nil {
				t.Errorf("ClientHello: %v", res.Err)
				proxySide.Close()
				upEnd.Close()
				return
			}
			hello := res.Hello
			s.Hello = &hello
			rec.Kind, rec.SNI, rec.ALPN = "tls", hello.ServerName, strings.Join(hello.ALPN, ",")
			if !r.ic.IsTrustHost(hello.ServerName) {
				subj.Protocol, subj.Domain = policy.ProtoTLS, hello.ServerName
				d := r.pol.Decide(subj)
				rec.Rule, rec.Action = d.Rule, d.Action.String()
				if d.Action != policy.Bump {
					t.Errorf("the policy says %s to %q: these tests only hand bumped TLS over", d.Action, hello.ServerName)
					proxySide.Close()
					upEnd.Close()
					return
				}
				s.Decision = d
			}
		case sniff.KindHTTP:
			req := res.HTTP
			s.HTTP = &req
		case sniff.KindHTTP2Cleartext:
			s.H2C = true
		default:
			t.Errorf("the client's first bytes are %s, not TLS or HTTP", res.Kind)
			proxySide.Close()
			upEnd.Close()
			return
		}
		s.Subject = subj
		r.ic.Serve(s)
	}()
	return sv
}

// peekedConn reads the bytes the sniffer peeked, then the connection.
type peekedConn struct {
	net.Conn
	r    *bufio.Reader // nil once empty
	held *atomic.Int64 // AddHeld's
	// readWait is OnReadWait's function, nil if none.
	readWait atomic.Pointer[func()]
}

// OnReadWait has *fn called before a Read of a TCP connection with
// nothing to read (SIOCINQ 0), as netstack.Conn's is before one that
// waits; a pipe cannot say.
func (c *peekedConn) OnReadWait(fn *func()) bool {
	if _, ok := c.Conn.(*net.TCPConn); !ok {
		return false
	}
	c.readWait.Store(fn)
	return true
}

// StopReadWait stops fn, if it is still the one set.
func (c *peekedConn) StopReadWait(fn *func()) { c.readWait.CompareAndSwap(fn, nil) }

// wouldWait reports whether a Read of the TCP connection would wait.
func (c *peekedConn) wouldWait() bool {
	raw, err := c.Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return false
	}
	n := 1
	_ = raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n == 0
}

// AddHeld counts what the session says it holds, as the packet stack's
// connection does for the memory reclaim.
func (c *peekedConn) AddHeld(delta int64) {
	c.held.Add(delta)
	// All sessions together, and the least that ever was: a charge
	// given back twice shows (TestHeldGivenBackOnEveryPath).
	for v := heldAll.Add(delta); ; {
		least := heldLeast.Load()
		if v >= least || heldLeast.CompareAndSwap(least, v) {
			break
		}
	}
}

func (c *peekedConn) Read(b []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(b) // buffered bytes only: no read of the connection
		}
		c.r = nil
	}
	if fn := c.readWait.Load(); fn != nil && c.wouldWait() {
		(*fn)()
	}
	return c.Conn.Read(b)
}

// CloseWrite passes a half-close on, as the appliance's own peeked
// connection does (proxy/tcp.go); a pipe has none.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Abort resets the connection, as the appliance's own peeked connection
// passes it on (proxy/tcp.go); a pipe's is a close.
func (c *peekedConn) Abort() { intercept.Abort(c.Conn) }

// SendQueued is the socket's unacknowledged bytes (SIOCOUTQ), as the
// appliance's packet stack says them (netstack.Conn.SendQueued).
func (c *peekedConn) SendQueued() (int, error) {
	tc, ok := c.Conn.(*net.TCPConn)
	if !ok {
		return 0, errors.ErrUnsupported
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var qerr error
	if err := raw.Control(func(fd uintptr) { n, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil {
		return 0, err
	}
	return n, qerr
}

// upstream is an HTTP server on the far end of a pipe: the destination.
type upstream struct {
	mu     sync.Mutex
	reqs   []string // "METHOD host path proto" of each request it served
	closed chan struct{}
	once   sync.Once
	// drop: answer, then close the connection without saying so first
	// (HTTP/1 only), as a server ending an idle keep-alive connection does.
	drop atomic.Bool
	// chunked: answer with a chunked body, as a handler that streams does.
	chunked atomic.Bool
}

// requests returns what the upstream has served.
func (u *upstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.reqs...)
}

// waitClosed waits until the upstream's connection has ended.
func (u *upstream) waitClosed(t *testing.T) {
	t.Helper()
	select {
	case <-u.closed:
	case <-time.After(waitLimit):
		t.Fatal("the upstream connection is still open")
	}
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	line := fmt.Sprintf("%s %s %s %s", req.Method, req.Host, req.URL.Path, req.Proto)
	u.mu.Lock()
	u.reqs = append(u.reqs, line)
	u.mu.Unlock()
	io.Copy(io.Discard, req.Body)
	body := "upstream: " + line
	if u.chunked.Load() {
		w.Header().Set("Transfer-Encoding", "chunked")
	}
	if u.drop.Load() {
		c, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		bw.Flush()
		c.Close()
		return
	}
	io.WriteString(w, body)
}

// startUpstream serves HTTP on one end of a new pipe and returns the other,
// the interceptor's upstream connection. With a certificate the server
// speaks TLS, offering protos by ALPN; without, cleartext.
func (r *rig) startUpstream(cert *tls.Certificate, protos ...string) (net.Conn, *upstream) {
	proxyEnd, serverEnd := net.Pipe()
	r.t.Cleanup(func() { proxyEnd.Close() })
	return proxyEnd, r.serveUpstream(serverEnd, cert, protos...)
}

// startUpstreamTCP is startUpstream over loopback TCP, for a connection
// whose two ends may both write at once: a pipe has no buffer, so a TLS
// client refusing the server's certificate with an alert would wait for the
// server, which waits for it to read the rest of its flight.
func (r *rig) startUpstreamTCP(cert *tls.Certificate, protos ...string) (net.Conn, *upstream) {
	proxyEnd, serverEnd := testnet.TCPPair(r.t)
	return proxyEnd, r.serveUpstream(serverEnd, cert, protos...)
}

// serveUpstream serves HTTP on serverEnd.
func (r *rig) serveUpstream(serverEnd net.Conn, cert *tls.Certificate, protos ...string) *upstream {
	u := &upstream{closed: make(chan struct{})}
	var conn net.Conn = serverEnd
	if cert != nil {
		conn = tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: protos})
	}
	srv := &http.Server{
		Handler: u,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				u.once.Do(func() { close(u.closed) })
			}
		},
		ErrorLog: log.New(io.Discard, "", 0), // a refused handshake is no news
	}
	ln := newOneConnListener(conn)
	go srv.Serve(ln)
	r.t.Cleanup(func() { srv.Close(); serverEnd.Close() })
	return u
}

// oneConnListener accepts one connection, then waits for Close.
type oneConnListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{ch: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.ch <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// httpClient is the client's side of a connection speaking HTTP/1.1.
type httpClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func newHTTPClient(t *testing.T, c net.Conn) *httpClient {
	c.SetDeadline(time.Now().Add(waitLimit))
	return &httpClient{t: t, c: c, br: bufio.NewReader(c)}
}

// do writes a request head and reads the response: its status and body.
func (h *httpClient) do(head string) (*http.Response, string) {
	h.t.Helper()
	if _, err := io.WriteString(h.c, head); err != nil {
		h.t.Fatalf("writing %q: %v", firstLine(head), err)
	}
	return h.read(firstLine(head))
}

// read reads one response.
func (h *httpClient) read(what string) (*http.Response, string) {
	h.t.Helper()
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		h.t.Fatalf("response to %s: %v", what, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		h.t.Fatalf("response body to %s: %v", what, err)
	}
	return resp, string(body)
}

// wantClosed checks that the proxy has ended the connection.
func (h *httpClient) wantClosed() {
	h.t.Helper()
	if b, err := h.br.ReadByte(); err == nil {
		h.t.Fatalf("the connection is still open: read %q", b)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}
