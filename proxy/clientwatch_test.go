package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// These tests end intercepted sessions whose client goes away while an
// HTTP/1 request is in flight and the origin stays silent: a client stack
// behind the GWLB simulator, the Proxy as the netstack's handler, and an
// origin on loopback that the Proxy dials from a host socket.

// rawClient is a client connection through the appliance that can be
// reset (gonet cannot send a RST) or half-closed.
type rawClient struct {
	net.Conn
	ep tcpip.Endpoint
}

// dialRaw connects a bare gVisor endpoint of cs to dst through the
// appliance.
func dialRaw(t *testing.T, cs *gwlbsim.ClientStack, dst netip.AddrPort) *rawClient {
	t.Helper()
	var wq waiter.Queue
	ep, terr := cs.Stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	ent, ch := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&ent)
	a := dst.Addr().As4()
	if terr = ep.Connect(tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(a), Port: dst.Port()}); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			t.Fatal(terr)
		}
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("the connection through the appliance did not complete")
		}
	}
	wq.EventUnregister(&ent)
	if terr = ep.LastError(); terr != nil {
		t.Fatalf("connecting through the appliance: %v", terr)
	}
	c := &rawClient{Conn: gonet.NewTCPConn(&wq, ep), ep: ep}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// closeLeftToTest is a client connection whose Close leaves the endpoint
// open, for a test that ends it itself (halfClose, reset) while the TLS
// or HTTP/2 client above may close when the appliance ends its side;
// dialRaw's cleanup closes it.
type closeLeftToTest struct{ net.Conn }

// Close does nothing: see closeLeftToTest.
func (closeLeftToTest) Close() error { return nil }

// reset sends the appliance a RST.
func (c *rawClient) reset() { c.ep.Abort() }

// halfClose sends the appliance a FIN; the client goes on reading.
func (c *rawClient) halfClose() error {
	if terr := c.ep.Shutdown(tcpip.ShutdownWrite); terr != nil {
		return net.UnknownNetworkError(terr.String())
	}
	return nil
}

// silentOrigin listens on loopback; each connection reads one request,
// says so on got, writes answer (when not empty), and then waits with its
// connection open, saying on closed once the appliance has closed it.
func silentOrigin(t *testing.T, answer string) (dest netip.AddrPort, got, closed chan struct{}) {
	t.Helper()
	got, closed = make(chan struct{}, 4), make(chan struct{}, 4)
	dest = destination0(t, func(c *net.TCPConn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		got <- struct{}{}
		if answer != "" {
			if _, err := io.WriteString(c, answer); err != nil {
				return
			}
		}
		io.Copy(io.Discard, c) // until the appliance closes or resets it
		closed <- struct{}{}
	})
	return dest, got, closed
}

// destination0 is destination without the hello: each connection goes to
// serve as accepted, and is closed when the test ends.
func destination0(t *testing.T, serve func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// wait fails t unless ch says something within d.
func wait(t *testing.T, ch chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatal(what)
	}
}

// httpRecord waits up to within for the record of kind http.
func httpRecord(t *testing.T, sink *recordSink, within time.Duration) (records.Record, bool) {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		for _, rec := range sink.parse(t) {
			if rec.Kind == "http" {
				return rec, true
			}
		}
	}
	return records.Record{}, false
}

// expectResetEnds checks that the session whose client reset has ended:
// the origin's connection closed, the request's record written saying
// reset, the connection counted ended.
func expectResetEnds(t *testing.T, r *stallRig, closed chan struct{}) {
	t.Helper()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("5 s after the client's reset the origin's connection is still open: tcp_active %d, records: %+v",
			r.p.Stats().TCPActive, r.sink.parse(t))
	}
	rec, ok := httpRecord(t, r.sink, 5*time.Second)
	if !ok {
		t.Fatal("the origin's connection closed, but the request has no record")
	}
	t.Logf("the request's record: result %s, error %q", rec.Result, rec.Error)
	if rec.Result != "reset" {
		t.Errorf("the request's record: result %q, want reset", rec.Result)
	}
	for end := time.Now().Add(5 * time.Second); r.p.Stats().TCPActive != 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := r.p.Stats().TCPActive; got != 0 {
		t.Errorf("tcp_active %d after the session ended, want 0", got)
	}
	if g := sessionGoroutines(3 * time.Second); g != "" {
		t.Errorf("goroutines of the session left after it ended:\n%s", g)
	}
}

// A cleartext HTTP/1 client sends a request and resets while the origin
// is silent (it read the request and never answers, or answered a head
// and the start of a large body and stopped, its connection open). Nobody
// reads the client while the request is in flight, so only the watch on
// its connection ends the session: the origin's connection is closed,
// the request recorded as reset, the connection counted ended.
func TestInterceptedClientResetOriginSilent(t *testing.T) {
	for name, answer := range map[string]string{
		"never answers":  "",
		"stops mid-body": "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nx",
	} {
		t.Run(name, func(t *testing.T) {
			r := newStallRig(t, time.Hour)
			dest, got, closed := silentOrigin(t, answer)
			c := dialRaw(t, r.client, dest)
			if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: origin.example\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			wait(t, got, 5*time.Second, "the request did not reach the origin")
			if answer != "" {
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
			}
			c.reset()
			expectResetEnds(t, r, closed)
		})
	}
}

// A client that half-closes after its request (HTTP/1.0 style, nc -q)
// still gets its answer: a FIN is not a break. The origin answers after
// the FIN is in.
func TestInterceptedClientHalfCloseGetsAnswer(t *testing.T) {
	r := newStallRig(t, time.Hour)
	answer := make(chan struct{})
	dest := destination0(t, func(c *net.TCPConn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		<-answer
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
	})
	c := dialRaw(t, r.client, dest)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: origin.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the FIN is in, the request in flight
	close(answer)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer after the client's half-close: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "hello" {
		t.Fatalf("body %q, %v; want hello", body, err)
	}
	rec, ok := httpRecord(t, r.sink, 5*time.Second)
	if !ok {
		t.Fatal("no record for the request")
	}
	if rec.Result != "ok" || rec.Status != http.StatusOK {
		t.Errorf("record: result %q, status %d, error %q; want ok, 200", rec.Result, rec.Status, rec.Error)
	}
}

// A client that half-closes after its request, then resets while the
// origin is silent: the FIN kept the session, the RST ends it.
func TestInterceptedClientHalfCloseThenReset(t *testing.T) {
	r := newStallRig(t, time.Hour)
	dest, got, closed := silentOrigin(t, "")
	c := dialRaw(t, r.client, dest)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: origin.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	wait(t, got, 5*time.Second, "the request did not reach the origin")
	time.Sleep(300 * time.Millisecond)
	select {
	case <-closed:
		t.Fatal("the client's FIN closed the origin's connection: the request in flight was cut off")
	default:
	}
	c.reset()
	expectResetEnds(t, r, closed)
}

// A bumped HTTP/1 client whose destination speaks HTTP/2 (its requests
// go through http.Transport, not the HTTP/1 transport) resets while the
// destination's handler has not answered: the session ends too, and the
// handler's request is cancelled.
func TestBumpedH1ClientResetH2OriginSilent(t *testing.T) {
	gotReq, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, _ http.ResponseWriter, req *http.Request) {
		gotReq <- struct{}{}
		<-req.Context().Done()
		cancelled <- struct{}{}
	}, "h2", "http/1.1")
	c := dialRaw(t, r.client, r.dest)
	tc := tls.Client(c, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1", "h2"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS handshake with the appliance: %v", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("the client negotiated %q, want http/1.1", p)
	}
	if _, err := io.WriteString(tc, "GET /big HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	wait(t, gotReq, 5*time.Second, "the request did not reach the destination")
	c.reset()
	wait(t, cancelled, 5*time.Second, "5 s after the client's reset the destination's handler still waits")
	rec, ok := httpRecord(t, r.sink, 5*time.Second)
	if !ok {
		t.Fatal("the request has no record")
	}
	if rec.Result != "reset" || rec.Status != 0 {
		t.Errorf("the request's record: result %q, status %d, error %q; want reset, no status (none was sent)", rec.Result, rec.Status, rec.Error)
	}
	tlsRec, ok := r.tlsRecord(t, 5*time.Second)
	if !ok {
		t.Fatal("the bumped connection has no record")
	}
	if tlsRec.Result != "reset" || tlsRec.ALPN != "h2" {
		t.Errorf("the connection's record: result %q, alpn %q, error %q; want reset over h2", tlsRec.Result, tlsRec.ALPN, tlsRec.Error)
	}
	for end := time.Now().Add(5 * time.Second); r.p.Stats().TCPActive != 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := r.p.Stats().TCPActive; got != 0 {
		t.Errorf("tcp_active %d after the session ended, want 0", got)
	}
}

// A cleartext HTTP client that vanishes mid-head (its stack drops all the
// appliance sends, so the keep-alive probes go unanswered) ends its
// connection with the stack's TCP timeout, ETIMEDOUT, within a second,
// long before the head's 10 s deadline: the record must not say the
// deadline ran out. ETIMEDOUT is a net.Error whose Timeout() is true,
// which the head deadline's check took for its own.
func TestInterceptedClientTimeoutMidHead(t *testing.T) {
	_, sink, client := quickKeepaliveRig(t)
	dest := destination0(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c := dialRaw(t, client, dest)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: origin.example\r\nX-P: ppp"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)               // the head's first bytes are read
	client.SetTap(func([]byte) bool { return true }) // the client is gone
	start := time.Now()
	rec, ok := httpRecord(t, sink, 8*time.Second)
	if !ok {
		t.Fatal("no http record 8 s after the client went")
	}
	t.Logf("after %v: result %s, error %q", time.Since(start).Round(time.Millisecond), rec.Result, rec.Error)
	if strings.Contains(rec.Error, "not complete") {
		t.Errorf("a client's TCP timeout recorded as the head deadline's: result %s, error %q", rec.Result, rec.Error)
	}
}

// A cleartext HTTP client that leaves its head unfinished and stays (it
// acknowledges, it sends nothing more) has its connection ended by the
// head deadline (10 s), and the record says so. Over the stack the
// deadline's error is gonet's own ("i/o timeout", Timeout() true), not
// os.ErrDeadlineExceeded as on a host socket: a check for the latter
// alone would record "no request could be read" instead.
func TestInterceptedHeadDeadlineRecorded(t *testing.T) {
	if testing.Short() {
		t.Skip("waits the 10 s head deadline")
	}
	r := newStallRig(t, time.Hour)
	dest := destination0(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c := dialRaw(t, r.client, dest)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: origin.example\r\nX-P: ppp"); err != nil {
		t.Fatal(err)
	}
	rec, ok := httpRecord(t, r.sink, 15*time.Second)
	if !ok {
		t.Fatal("no http record 15 s after an unfinished head")
	}
	if rec.Result != "timeout" || !strings.Contains(rec.Error, "request head not complete") {
		t.Errorf("record: result %s, error %q; want timeout, request head not complete", rec.Result, rec.Error)
	}
}

// A cleartext HTTP/1 client that vanishes while its request waits on a
// silent origin (its stack drops everything the appliance sends, so the
// keepalive probes go unanswered) is ended by the watch with the stack's
// timeout: the records say timeout, as a relayed flow's do
// (TestRelayClientTimeoutRecorded), not reset: the client sent none.
// Keepalives are tuned to give up within a second.
func TestInterceptedClientTimeoutRecorded(t *testing.T) {
	_, sink, client := quickKeepaliveRig(t)
	dest, got, closed := silentOrigin(t, "")
	c := dialRaw(t, client, dest)
	if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: origin.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	wait(t, got, 5*time.Second, "the request did not reach the origin")
	client.SetTap(func([]byte) bool { return true }) // the client is gone
	wait(t, closed, 10*time.Second, "10 s after the client vanished the origin's connection is still open")
	rec, ok := httpRecord(t, sink, 5*time.Second)
	if !ok {
		t.Fatal("the request has no record")
	}
	t.Logf("the request's record: result %s, error %q", rec.Result, rec.Error)
	if rec.Result != "timeout" || !strings.Contains(rec.Error, "the client's connection broke") {
		t.Errorf("the request's record: result %q, error %q; want timeout, the client's connection broke", rec.Result, rec.Error)
	}
}

// An HTTP/2 client that is done closes as curl does: its close_notify
// and FIN, and then a RST, which its kernel sends when the appliance's
// answer to the close (the server's GOAWAY, its close_notify) reaches a
// socket closed already. The RST comes while the session is between
// requests, after the client ended its side cleanly (or alone, when it
// left before the FIN could): nothing the client asked for is lost, and
// the connection's record must say ok, not that the client's connection
// broke. The RST follows the FIN at once here, so it often reaches the
// watch before the server has read the end.
func TestBumpedH2ClientDoneThenReset(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}, "h2")
	const conns = 12
	for i := range conns {
		c := dialRaw(t, r.client, r.dest)
		// The appliance answers the close_notify with its own and its FIN,
		// and the transport's reader, at that end, closes the connection:
		// its FIN, before the test's when the answer comes quickly, and
		// the endpoint closed (halfClose then fails, not connected) with
		// no RST to send. The client's end is the test's to make.
		tc := tls.Client(closeLeftToTest{c}, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"h2"}})
		cc, err := (&http2.Transport{}).NewClientConn(tc)
		if err != nil {
			t.Fatalf("connection %d: HTTP/2 through the appliance: %v", i, err)
		}
		req, _ := http.NewRequest(http.MethodGet, "https://big.example/small", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || string(body) != "hello" {
			t.Fatalf("connection %d: body %q, %v; want hello", i, body, err)
		}
		tc.CloseWrite() // close_notify
		// The FIN leaves at once only with nothing queued before it: a
		// RST sent while it waits behind the close_notify goes alone, a
		// reset without a FIN, between requests all the same.
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
			if n, terr := c.ep.GetSockOptInt(tcpip.SendQueueSizeOption); terr != nil || n == 0 {
				break
			}
		}
		if err := c.halfClose(); err != nil {
			t.Fatal(err)
		}
		c.reset()
	}
	var tlsRecs []records.Record
	for end := time.Now().Add(10 * time.Second); len(tlsRecs) < conns && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		tlsRecs = tlsRecs[:0]
		for _, rec := range r.sink.parse(t) {
			if rec.Kind == "tls" {
				tlsRecs = append(tlsRecs, rec)
			}
		}
	}
	if len(tlsRecs) != conns {
		t.Fatalf("%d connection records, want %d", len(tlsRecs), conns)
	}
	for _, rec := range tlsRecs {
		if rec.Result != "ok" || rec.Error != "" {
			t.Errorf("client port %d: the connection's record says result %q, error %q; want ok: the client had closed, with nothing in flight",
				rec.ClientPort, rec.Result, rec.Error)
		}
	}
}
