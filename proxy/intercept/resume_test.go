package intercept_test

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// resumingServer is an HTTPS upstream whose connections share one TLS
// configuration, hence one set of ticket keys: it resumes any session it
// issued, on any connection. It answers with whether the connection
// resumed one.
type resumingServer struct {
	cfg     *tls.Config
	resumed atomic.Int32 // handshakes that resumed a session
	full    atomic.Int32 // full handshakes
	closing bool         // each response ends its connection, unannounced
}

func newResumingServer(cert *tls.Certificate) *resumingServer {
	return &resumingServer{cfg: &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}}}
}

// conn returns the interceptor's end of a new connection to the server.
func (u *resumingServer) conn(t *testing.T) net.Conn {
	proxyEnd, serverEnd := net.Pipe()
	t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	tc := tls.Server(serverEnd, u.cfg)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !u.closing {
				io.WriteString(w, "ok")
				return
			}
			if c, bw, err := w.(http.Hijacker).Hijack(); err == nil {
				bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				bw.Flush()
				c.(*tls.Conn).NetConn().Close() // no close_notify: a pipe would block on it
			}
		}),
		ConnState: func(c net.Conn, s http.ConnState) {
			if s != http.StateActive {
				return
			}
			if c.(*tls.Conn).ConnectionState().DidResume {
				u.resumed.Add(1)
			} else {
				u.full.Add(1)
			}
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.Serve(newOneConnListener(tc))
	t.Cleanup(func() { srv.Close() })
	return proxyEnd
}

// bumpedGet makes one request on a new bumped connection and returns the
// client's TLS state; the connection stays open until the test ends.
func bumpedGet(t *testing.T, r *rig, up net.Conn, dest netip.AddrPort, cfg *tls.Config) tls.ConnectionState {
	t.Helper()
	c, _ := r.connect(up, dest)
	tc := tls.Client(c, cfg)
	t.Cleanup(func() { tc.Close() })
	h := newHTTPClient(t, tc)
	resp, body := h.do("GET /r HTTP/1.1\r\nHost: " + cfg.ServerName + "\r\n\r\n")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	return tc.ConnectionState()
}

// TestUpstreamSessionResumed: a second bumped connection to the same
// destination and name resumes the first one's upstream session, and is
// verified all the same; another address or another name never gets it.
func TestUpstreamSessionResumed(t *testing.T) {
	r := newRig(t, testPolicy)
	srv := newResumingServer(r.upLeaf("*.example.test"))
	client := func(name string) *tls.Config {
		return &tls.Config{ServerName: name, RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}
	}
	otherDest := netip.MustParseAddrPort("192.0.2.11:443")
	steps := []struct {
		what        string
		dest        netip.AddrPort
		name        string
		wantResumed int32
	}{
		{"first connection", tlsDest, "www.example.test", 0},
		{"same destination and name", tlsDest, "www.example.test", 1},
		{"another address, same name", otherDest, "www.example.test", 1},
		{"same address, another name", tlsDest, "api.example.test", 1},
		{"same destination and name again", tlsDest, "www.example.test", 2},
	}
	for i, st := range steps {
		bumpedGet(t, r, srv.conn(t), st.dest, client(st.name))
		if got := srv.resumed.Load(); got != st.wantResumed {
			t.Fatalf("step %d, %s: %d resumed upstream handshakes, want %d", i, st.what, got, st.wantResumed)
		}
	}
	for _, rec := range ofKind(r.records(), "tls") {
		if rec.UpstreamVerify != "ok" {
			t.Errorf("connection to %s: upstream_verify %q, want ok", rec.SNI, rec.UpstreamVerify)
		}
	}
}

// laxPolicy bumps everything, and accepts lax.example.test's certificate
// unverified.
const laxPolicy = `
policy:
  default: bump
  rules:
    - name: lax
      domains: ["lax.example.test"]
      action: bump
      allow_unverified_upstream: true
`

// TestUnverifiedUpstreamSessionNotKept: a session whose certificate a
// rule accepted unverified is never offered again.
func TestUnverifiedUpstreamSessionNotKept(t *testing.T) {
	r := newRig(t, laxPolicy)
	srv := newResumingServer(r.strangerLeaf("lax.example.test"))
	cfg := &tls.Config{ServerName: "lax.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}
	for range 2 {
		bumpedGet(t, r, srv.conn(t), tlsDest, cfg)
	}
	if n := srv.resumed.Load(); n != 0 {
		t.Fatalf("%d upstream handshakes resumed a session made unverified", n)
	}
}

// cheatingCache hands its last session out for any name: a client that
// presents a ticket for one name on a connection for another.
type cheatingCache struct {
	mu   sync.Mutex
	last *tls.ClientSessionState
}

func (c *cheatingCache) Get(string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.last != nil
}

func (c *cheatingCache) Put(_ string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs != nil {
		c.last = cs
	}
}

// TestClientSessionResumed: a client resumes its session on a later
// bumped connection for the same name, over TLS 1.3 and 1.2; a ticket
// for one name is refused on a connection for another (a full handshake
// with the other name's leaf instead), as is one older than a day.
func TestClientSessionResumed(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			var clock atomic.Int64 // added to the real time, in seconds
			r := newRig(t, testPolicy, func(*intercept.Config) {})
			intercept.SetResumptionClock(r.ic, func() time.Time { return time.Now().Add(time.Duration(clock.Load()) * time.Second) })
			srv := newResumingServer(r.upLeaf("*.example.test"))
			cache := tls.NewLRUClientSessionCache(8)
			client := func(name string, cache tls.ClientSessionCache) *tls.Config {
				return &tls.Config{
					ServerName: name, RootCAs: r.caPool(), NextProtos: []string{"http/1.1"},
					MaxVersion: v, ClientSessionCache: cache,
				}
			}
			if cs := bumpedGet(t, r, srv.conn(t), tlsDest, client("www.example.test", cache)); cs.DidResume {
				t.Fatal("the first connection resumed")
			}
			if cs := bumpedGet(t, r, srv.conn(t), tlsDest, client("www.example.test", cache)); !cs.DidResume {
				t.Fatal("the second connection for the same name did not resume")
			}
			clock.Store(int64(3 * time.Hour / time.Second)) // keys rotated since: the ticket still holds
			if cs := bumpedGet(t, r, srv.conn(t), tlsDest, client("www.example.test", cache)); !cs.DidResume {
				t.Fatal("a connection three hours later did not resume")
			}

			// A client presenting its ticket for www on a connection for
			// api gets a full handshake and api's leaf. It must not verify
			// the leaf itself to offer it at all: crypto/tls would not.
			cheat := &cheatingCache{}
			bumpedGet(t, r, srv.conn(t), tlsDest, client("www.example.test", cheat))
			bad := client("api.example.test", cheat)
			bad.InsecureSkipVerify = true
			cs := bumpedGet(t, r, srv.conn(t), tlsDest, bad)
			if cs.DidResume {
				t.Fatal("a ticket for www.example.test resumed on a connection for api.example.test")
			}
			if err := cs.PeerCertificates[0].VerifyHostname("api.example.test"); err != nil {
				t.Fatalf("the full handshake's leaf: %v", err)
			}

			clock.Store(int64((3*time.Hour + 25*time.Hour) / time.Second)) // past the ticket's lifetime
			if cs := bumpedGet(t, r, srv.conn(t), tlsDest, client("www.example.test", cache)); cs.DidResume {
				t.Fatal("a ticket older than a day resumed")
			}
		})
	}
}
