package intercept_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// plainSink records what Config.Plaintext is handed.
type plainSink struct {
	mu      sync.Mutex
	flows   []intercept.PlaintextFlow
	streams []*plainStream
}

func (p *plainSink) OpenPlaintext(f intercept.PlaintextFlow) intercept.PlaintextStream {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &plainStream{}
	p.flows = append(p.flows, f)
	p.streams = append(p.streams, s)
	return s
}

func (p *plainSink) get() ([]intercept.PlaintextFlow, []*plainStream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]intercept.PlaintextFlow(nil), p.flows...), append([]*plainStream(nil), p.streams...)
}

type plainStream struct {
	mu                                 sync.Mutex
	fromClient, fromServer             bytes.Buffer
	clientClosed, serverClosed, closes int
	resets, serverResets               int
	afterClose                         bool
	serverAfterClientClosed            bool
}

func (s *plainStream) FromClient(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.afterClose = s.afterClose || s.closes > 0
	s.fromClient.Write(b)
}

func (s *plainStream) FromServer(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.afterClose = s.afterClose || s.closes > 0
	s.fromServer.Write(b)
}

func (s *plainStream) ClientClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clientClosed++
}

func (s *plainStream) ServerClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.serverClosed++
}

func (s *plainStream) ClientReset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resets++
}

func (s *plainStream) ServerReset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.serverResets++
}

func (s *plainStream) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closes++
}

func (s *plainStream) snapshot() (c2s, s2c string, closes int, afterClose bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fromClient.String(), s.fromServer.String(), s.closes, s.afterClose
}

// TestPlaintextHTTP1: a bumped HTTP/1.1 connection's decrypted bytes reach
// Config.Plaintext as sent: the client's request byte for byte, and the
// response as written to the client (goproxy's CONNECT answer, never
// sent, left out); the flow is named as its record is; the stream is
// closed once, when the session ends. A cleartext HTTP connection has
// none.
func TestPlaintextHTTP1(t *testing.T) {
	sink := &plainSink{}
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Plaintext = sink })
	upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "http/1.1")
	req := "GET /hello?secret=1 HTTP/1.1\r\nHost: www.example.test\r\nUser-Agent: plaintext-test\r\n\r\n"
	resp, body := newHTTPClient(t, tc).do(req)
	if resp.StatusCode != 200 {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	tc.Close()
	sv.waitDoneOnce(t)

	flows, streams := sink.get()
	if len(flows) != 1 {
		t.Fatalf("%d plaintext streams, want 1", len(flows))
	}
	want := intercept.PlaintextFlow{Endpoint: testEndpoint, Client: netip.AddrPortFrom(testClient, testClientPort), Dest: tlsDest, SNI: "www.example.test"}
	if flows[0] != want {
		t.Errorf("flow %+v, want %+v", flows[0], want)
	}
	c2s, s2c, closes, after := streams[0].snapshot()
	if c2s != req {
		t.Errorf("from the client %q, want %q", c2s, req)
	}
	if !strings.HasPrefix(s2c, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(s2c, "\r\n\r\n"+body) {
		t.Errorf("to the client %q, want the response with body %q", s2c, body)
	}
	if closes != 1 || after {
		t.Errorf("closed %d times, bytes after the close: %v", closes, after)
	}

	// Cleartext HTTP: nothing to synthesize, it is on the wire already.
	upEnd, _ = r.startUpstream(nil)
	c, sv = r.connect(upEnd, httpDest)
	newHTTPClient(t, c).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	c.Close()
	sv.waitDoneOnce(t)
	if flows, _ := sink.get(); len(flows) != 1 {
		t.Errorf("%d plaintext streams after a cleartext request, want still 1", len(flows))
	}
}

// TestPlaintextClientReset: a bumped client that resets its connection
// (SO_LINGER 0, over loopback TCP) rather than closing it makes the stream
// end in ClientReset, not ClientClosed, and the stream is still closed
// once; one that closes cleanly gets ClientClosed and no reset.
func TestPlaintextClientReset(t *testing.T) {
	for _, reset := range []bool{true, false} {
		sink := &plainSink{}
		r := newRig(t, testPolicy, func(c *intercept.Config) { c.Plaintext = sink })
		upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
		c, sv := r.connectTCP(upEnd, tlsDest)
		tc := bumpClient(t, r, c, "www.example.test", "http/1.1")
		resp, body := newHTTPClient(t, tc).do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("response %d %q", resp.StatusCode, body)
		}
		if reset {
			c.SetLinger(0) // Close sends a RST
			c.Close()
		} else {
			tc.CloseWrite() // close_notify, then the TCP FIN
			c.CloseWrite()
		}
		sv.waitDoneOnce(t)
		_, streams := sink.get()
		if len(streams) != 1 {
			t.Fatalf("%d streams, want 1", len(streams))
		}
		st := streams[0]
		st.mu.Lock()
		resets, clientClosed, closes := st.resets, st.clientClosed, st.closes
		st.mu.Unlock()
		if reset && (resets == 0 || clientClosed != 0 || closes != 1) {
			t.Errorf("client reset: ClientReset %d times, ClientClosed %d, Close %d; want at least one reset, no ClientClosed, one Close", resets, clientClosed, closes)
		}
		if !reset && (resets != 0 || clientClosed == 0 || closes != 1) {
			t.Errorf("client closed: ClientReset %d times, ClientClosed %d, Close %d; want no reset, ClientClosed, one Close", resets, clientClosed, closes)
		}
	}
}

// TestPlaintextHTTP2: a bumped HTTP/2 connection's plaintext is its frames
// as sent: the client's preface first, the server's SETTINGS frame first
// the other way.
func TestPlaintextHTTP2(t *testing.T) {
	sink := &plainSink{}
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Plaintext = sink })
	upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
	c, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, c, "www.example.test", "h2")
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "https://www.example.test/two", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	cc.Close()
	sv.waitDoneOnce(t)
	_, streams := sink.get()
	if len(streams) != 1 {
		t.Fatalf("%d plaintext streams, want 1", len(streams))
	}
	c2s, s2c, closes, _ := streams[0].snapshot()
	if !strings.HasPrefix(c2s, http2.ClientPreface) || len(s2c) < 9 || s2c[3] != byte(http2.FrameSettings) || closes != 1 {
		t.Errorf("from the client %q…, to it %q…, closed %d times", c2s[:min(len(c2s), 40)], s2c[:min(len(s2c), 12)], closes)
	}
}

// gonetTimeout is the deadline error gvisor's gonet returns from a Read
// (inside a *net.OpError): a net.Error whose Timeout() is true, not
// os.ErrDeadlineExceeded.
type gonetTimeout struct{}

func (gonetTimeout) Error() string   { return "i/o timeout" }
func (gonetTimeout) Timeout() bool   { return true }
func (gonetTimeout) Temporary() bool { return true }

// gonetConn makes a host socket's deadline errors look like gonet's, as
// the client connection's are on the stack.
type gonetConn struct{ net.Conn }

func (c gonetConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = &net.OpError{Op: "read", Net: "tcp", Err: gonetTimeout{}}
	}
	return n, err
}

// TestPlaintextIdleH2Deadline: a bumped HTTP/2 client that sends a request
// with a body and then pauses lets the frame deadline fire, which the
// connection reads on past. With the deadline error gonet's (as on the
// stack) the plaintext must not take it for a client reset: a reset ends
// the capture, so everything after the pause would be hidden from the IDS.
func TestPlaintextIdleH2Deadline(t *testing.T) {
	defer intercept.SetRequestHeadTimeout(200 * time.Millisecond)()
	sink := &plainSink{}
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Plaintext = sink })
	upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "h2", "http/1.1")
	client, proxySide := testnet.TCPPair(t)
	sv := r.serve(client, gonetConn{proxySide}, upEnd, tlsDest)
	tc := bumpClient(t, r, client, "www.example.test", "h2")
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	post := func(path string) {
		req, _ := http.NewRequest("POST", "https://www.example.test"+path, strings.NewReader(strings.Repeat("x", 40000)))
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	post("/first")
	time.Sleep(time.Second) // several deadlines fire
	post("/after-the-pause")
	cc.Close()
	client.Close()
	sv.waitDoneOnce(t)
	_, streams := sink.get()
	if len(streams) != 1 {
		t.Fatalf("%d plaintext streams, want 1", len(streams))
	}
	st := streams[0]
	st.mu.Lock()
	resets := st.resets
	st.mu.Unlock()
	c2s, _, _, _ := st.snapshot()
	if resets != 0 {
		t.Errorf("ClientReset %d times on a live connection that only paused", resets)
	}
	// The HPACK-encoded path may be Huffman-coded; the body is the
	// second request's evidence: two bodies' worth of x.
	if n := strings.Count(c2s, "x"); n < 80000 {
		t.Errorf("the plaintext from the client holds %d bytes of the two bodies, want 80000", n)
	}
}
