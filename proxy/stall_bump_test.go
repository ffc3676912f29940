package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// These tests stall bumped connections for real, as stall_test.go does
// relayed flows: a client stack behind the GWLB simulator speaks TLS to the
// appliance, which bumps it (a leaf from its CA) and fetches from an HTTPS
// destination on loopback.

type bumpStallRig struct {
	*stallRig
	roots *x509.CertPool // the appliance's CA, which the client trusts
	dest  netip.AddrPort
	// served counts what the destination's handlers wrote; ended says
	// when one returned, with its write's error.
	served atomic.Int64
	ended  chan error
}

func newBumpStallRig(t *testing.T, timeout time.Duration, handler func(rig *bumpStallRig, w http.ResponseWriter, r *http.Request), destProtos ...string) *bumpStallRig {
	t.Helper()
	return newBumpStallRigPolicy(t, "policy: {default: bump}\n", timeout, handler, destProtos...)
}

// bumpStallByName bumps big.example alone: only its name lets a flow
// through, so the appliance dials the destination only once the bump is
// decided (tcpname.go, intercept/bumpcheck.go).
const bumpStallByName = `
policy:
  default: deny
  rules:
    - name: big
      domains: [big.example]
      action: bump
`

// newBumpStallRigPolicy is newBumpStallRig with the policy doc.
func newBumpStallRigPolicy(t *testing.T, doc string, timeout time.Duration, handler func(rig *bumpStallRig, w http.ResponseWriter, r *http.Request), destProtos ...string) *bumpStallRig {
	t.Helper()
	return newBumpRig(t, bumpRigOptions{doc: doc, timeout: timeout, handler: handler, destProtos: destProtos})
}

// bumpRigOptions are newBumpRig's: newBumpStallRigPolicy's, and the
// interceptor's plaintext sink and the stacks' TCP options.
type bumpRigOptions struct {
	doc        string
	timeout    time.Duration
	handler    func(rig *bumpStallRig, w http.ResponseWriter, r *http.Request)
	destProtos []string
	plaintext  intercept.Plaintext
	tcp        netstack.TCPOptions
	// destRcvBuf, when set, is the SO_RCVBUF of the destination's
	// connections: a destination slower than its client.
	destRcvBuf int
	// destWrap, when set, wraps the destination's listener under its TLS.
	destWrap func(net.Listener) net.Listener
}

// newBumpRig is newBumpStallRigPolicy with all of o.
func newBumpRig(t *testing.T, o bumpRigOptions) *bumpStallRig {
	t.Helper()
	doc, timeout, handler, destProtos := o.doc, o.timeout, o.handler, o.destProtos
	r := &bumpStallRig{stallRig: &stallRig{sink: new(recordSink)}, ended: make(chan error, 4)}
	upCA := clsMust(certs.Generate("stall test upstream CA"))(t)
	leaf := clsMust(clsMust(certs.NewMinter(upCA, certs.MinterOptions{}))(t).LeafFor([]string{"big.example"}, nil))(t)
	upRoots := x509.NewCertPool()
	upRoots.AddCert(upCA.Certificate())
	if len(destProtos) == 0 {
		destProtos = []string{"http/1.1"}
	}
	raw := destListener(t, o.destRcvBuf)
	if o.destWrap != nil {
		raw = o.destWrap(raw)
	}
	ln := tls.NewListener(raw, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: destProtos})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { handler(r, w, req) }),
		ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	r.dest = ln.Addr().(*net.TCPAddr).AddrPort()

	pol := clsMust(policy.Parse("test.yaml", []byte(doc)))(t)
	h := new(policy.Holder)
	h.Store(pol)
	ca := clsMust(certs.Generate("stall test appliance CA"))(t)
	r.roots = x509.NewCertPool()
	r.roots.AddCert(ca.Certificate())
	r.p = New(Config{Records: records.NewWriter(nil, r.sink), Policy: h, AllowLoopback: true, WriteStallTimeout: timeout,
		Intercept: intercept.Config{UpstreamRoots: upRoots, Minter: clsMust(certs.NewMinter(ca, certs.MinterOptions{}))(t), Plaintext: o.plaintext}})
	t.Cleanup(r.p.Close)
	ns, ep := simulatedEndpointTCP(t, r.p, true, o.tcp)
	r.ns = ns
	var err error
	if r.client, err = ep.NewClientStack(netip.MustParseAddr("198.18.0.5")); err != nil {
		t.Fatal(err)
	}
	return r
}

// flood answers with an endless body, counting what it wrote, until a
// write fails. The first few failures go to ended; a handler past them
// (an HTTP/2 test's many streams) does not wait for room there.
func (r *bumpStallRig) flood(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	chunk := make([]byte, 64<<10)
	for {
		n, err := w.Write(chunk)
		r.served.Add(int64(n))
		if err != nil {
			select {
			case r.ended <- err:
			default:
			}
			return
		}
	}
}

// get dials the destination through the appliance, completes TLS with the
// appliance's leaf, and sends a GET; it returns the connection and a
// reader past the response's head.
func (r *bumpStallRig) get(t *testing.T) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c := r.dialTLS(t, "http/1.1")
	if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response head: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return c, br
}

// tlsRecord waits up to within for the bumped connection's record.
func (r *bumpStallRig) tlsRecord(t *testing.T, within time.Duration) (records.Record, bool) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		for _, rec := range r.sink.parse(t) {
			if rec.Kind == "tls" {
				return rec, true
			}
		}
	}
	return records.Record{}, false
}

// A bumped client that reads part of a large response, then stops reading
// while the destination keeps sending: the appliance's write to the
// client's stack stalls under TLS and goproxy, and within about two
// timeouts the whole session is ended (the client and the destination
// reset, goproxy's and the transport's goroutines gone, the connection
// counted ended), its tls record saying stalled and naming the client,
// and the counter counting it. Without the bound the session, and the
// stack's buffers under it, stay for good.
func TestBumpClientStallsDownload(t *testing.T) {
	r := newBumpStallRig(t, time.Second, (*bumpStallRig).flood)
	_, br := r.get(t)
	if sessionGoroutines(0) == "" {
		t.Fatal("no goroutine of the session found while it is served: the check below shows nothing")
	}
	if _, err := io.ReadFull(br, make([]byte, 1<<20)); err != nil { // the window opens, then shuts
		t.Fatal(err)
	}
	stalled(t, &r.served)
	stalledAt := time.Now()
	rec, ok := r.tlsRecord(t, 5*time.Second)
	if !ok {
		t.Fatalf("the bumped connection stalled %v ago (%d MiB served) and is still served (tcp_stalled %d, tcp_active %d)",
			time.Since(stalledAt).Round(time.Millisecond), r.served.Load()>>20, r.p.Stats().TCPStalled, r.p.Stats().TCPActive)
	}
	took := time.Since(stalledAt)
	t.Logf("ended %v after the destination's writes stopped moving", took.Round(time.Millisecond))
	if took > 3*time.Second { // up to two timeouts and a sweep, less what stalled took to see it
		t.Errorf("ended %v after the writes stopped moving, timeout 1 s", took)
	}
	r.checkStalled(t, rec, "client")
	if rec.Action != "bump" || rec.BytesIn < 1<<20 {
		t.Errorf("record: action %q, bytes_in %d: not the bumped download", rec.Action, rec.BytesIn)
	}
	for _, req := range r.sink.parse(t) {
		if req.Kind == "http" {
			t.Logf("the request's record: result %s, error %q", req.Result, req.Error)
			if req.Result != "stalled" {
				t.Errorf("the request's record: result %q, want stalled", req.Result)
			}
		}
	}
	select {
	case err := <-r.ended:
		t.Logf("the destination's write: %v", err)
	case <-time.After(5 * time.Second):
		t.Errorf("the destination's handler still writes: its connection was not ended")
	}
	if got := r.p.Stats().TCPActive; got != 0 {
		t.Errorf("tcp_active %d after the session ended, want 0", got)
	}
	if n := r.p.stalls.size(); n != 0 {
		t.Errorf("the stall watch still holds %d writes", n)
	}
	// goproxy's and the upstream transport's goroutines for the session
	// are gone.
	if g := sessionGoroutines(3 * time.Second); g != "" {
		t.Errorf("goroutines of the session left after it ended:\n%s", g)
	}
}

// A bumped client uploading to a destination that reads nothing of the
// body: the transport's write to the destination's socket stalls under
// TLS, and the session is ended as above, the record naming the
// destination. So too when the destination was dialled by the interceptor,
// a bump only the name allowed.
func TestBumpDestinationStallsUpload(t *testing.T) {
	for _, tc := range []struct{ name, doc string }{
		{"dialled first", "policy: {default: bump}\n"},
		{"by name", bumpStallByName},
	} {
		t.Run(tc.name, func(t *testing.T) { testBumpDestinationStallsUpload(t, tc.doc) })
	}
}

func testBumpDestinationStallsUpload(t *testing.T, doc string) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	r := newBumpStallRigPolicy(t, doc, time.Second, func(rig *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		<-release // reads nothing of the body
	})
	c := r.dialTLS(t, "http/1.1")
	const size = 1 << 30
	if _, err := fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: big.example\r\nContent-Length: %d\r\n\r\n", size); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	clientErr := make(chan error, 1)
	go func() { clientErr <- flood(c, &sent) }()
	stalled(t, &sent)
	stalledAt := time.Now()
	rec, ok := r.tlsRecord(t, 5*time.Second)
	if !ok {
		t.Fatalf("the upload stalled %v ago (%d MiB sent) and is still served (tcp_stalled %d)",
			time.Since(stalledAt).Round(time.Millisecond), sent.Load()>>20, r.p.Stats().TCPStalled)
	}
	t.Logf("ended %v after the client's writes stopped moving", time.Since(stalledAt).Round(time.Millisecond))
	r.checkStalled(t, rec, "destination")
	select {
	case err := <-clientErr:
		t.Logf("the client's write: %v", err)
	case <-time.After(5 * time.Second):
		t.Errorf("the client was not reset")
	}
	if got := r.p.Stats().TCPActive; got != 0 {
		t.Errorf("tcp_active %d after the session ended, want 0", got)
	}
}

// A bumped client that reads slowly but steadily, a little every 200 ms,
// keeps the appliance's write to it waiting far longer in all than the
// timeout, but never without progress for that long: it is not aborted.
func TestBumpSlowReaderNotStalled(t *testing.T) {
	r := newBumpStallRig(t, time.Second, (*bumpStallRig).flood)
	c, br := r.get(t)
	read := readSlowly(t, r.p, c, br, 8<<10)
	t.Logf("read %d KiB in 5 s; the destination had sent %d KiB", read>>10, r.served.Load()>>10)
	if r.served.Load()-read < 1<<20 || r.p.stalls.size() == 0 {
		t.Fatalf("%d bytes in flight, %d writes in the watch: the appliance's write never waited, the test shows nothing",
			r.served.Load()-read, r.p.stalls.size())
	}
	r.expectNotStalled(t)
}

// size returns how many writes the watch holds.
func (w *stallWatch) size() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.dirs)
}

// sessionGoroutines waits up to within for the goroutines serving
// intercepted sessions (goproxy's, package intercept's, net/http's
// client and server connections) to end; it returns the stacks of those
// left.
func sessionGoroutines(within time.Duration) string {
	buf := make([]byte, 1<<20)
	for end := time.Now().Add(within); ; time.Sleep(20 * time.Millisecond) {
		var left []string
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "elazarl/goproxy") || strings.Contains(g, "gwlbproxy/proxy/intercept.") ||
				strings.Contains(g, "net/http.(*persistConn)") || strings.Contains(g, "net/http.(*http2") {
				left = append(left, g)
			}
		}
		if len(left) == 0 || time.Now().After(end) {
			return strings.Join(left, "\n\n")
		}
	}
}

// dialTLS dials the destination through the appliance and completes TLS
// with the appliance's leaf, offering proto by ALPN; the connection is
// closed when the test ends.
func (r *bumpStallRig) dialTLS(t *testing.T, proto string) *tls.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, err := r.client.DialTCP(ctx, r.dest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := tls.Client(nc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{proto}})
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS handshake with the appliance: %v", err)
	}
	return c
}

// dialRawTLS is dialTLS over a raw client connection, which the test can
// reset (rawClient.reset) or half-close.
func (r *bumpStallRig) dialRawTLS(t *testing.T, proto string) (*rawClient, *tls.Conn) {
	t.Helper()
	rc := dialRaw(t, r.client, r.dest)
	c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{proto}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS handshake with the appliance: %v", err)
	}
	return rc, c
}
