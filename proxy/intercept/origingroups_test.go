package intercept_test

import (
	"crypto/tls"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// offeringServer is a resumingServer that keeps the groups each
// ClientHello it receives offers, and prefers groups of its own.
type offeringServer struct {
	*resumingServer
	mu     sync.Mutex
	offers [][]tls.CurveID
}

func newOfferingServer(cert *tls.Certificate, prefer ...tls.CurveID) *offeringServer {
	s := &offeringServer{resumingServer: newResumingServer(cert)}
	s.cfg.CurvePreferences = prefer
	s.cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		s.mu.Lock()
		s.offers = append(s.offers, slices.Clone(h.SupportedCurves))
		s.mu.Unlock()
		return nil, nil
	}
	return s
}

// lastOfferedHybrid reports whether the last ClientHello offered a
// post-quantum hybrid.
func (s *offeringServer) lastOfferedHybrid(t *testing.T) bool {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.offers) == 0 {
		t.Fatal("the origin saw no ClientHello")
	}
	last := s.offers[len(s.offers)-1]
	if !slices.Contains(last, tls.X25519) {
		t.Fatalf("the ClientHello offered %v, without X25519", last)
	}
	return slices.Contains(last, tls.X25519MLKEM768)
}

// TestOriginGroupsOfferedWhereUsed: an origin whose verified handshake
// chose a classical group is offered classical groups only, for a while,
// and only at that destination and name; an origin that chose a hybrid,
// and one whose certificate a rule accepted unverified, keep being
// offered the hybrids.
func TestOriginGroupsOfferedWhereUsed(t *testing.T) {
	r := newRig(t, laxPolicy)
	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC).UnixNano())
	intercept.SetOriginGroupsClock(r.ic, func() time.Time { return time.Unix(0, clock.Load()) })
	client := func(name string) *tls.Config {
		return &tls.Config{ServerName: name, RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}
	}
	classical := newOfferingServer(r.upLeaf("*.example.test"), tls.X25519, tls.CurveP256)
	hybrid := newOfferingServer(r.upLeaf("*.example.test"))
	lax := newOfferingServer(r.strangerLeaf("lax.example.test"), tls.X25519)
	otherDest := netip.MustParseAddrPort("192.0.2.11:443")
	steps := []struct {
		what       string
		srv        *offeringServer
		dest       netip.AddrPort
		name       string
		later      time.Duration // the clock moves on by this first
		wantHybrid bool
	}{
		{"classical origin, first connection", classical, tlsDest, "www.example.test", 0, true},
		{"classical origin again", classical, tlsDest, "www.example.test", 0, false},
		{"classical origin, another address", classical, otherDest, "www.example.test", 0, true},
		{"classical origin, another name", classical, tlsDest, "api.example.test", 0, true},
		{"classical origin, before the memory lapses", classical, tlsDest, "www.example.test", intercept.ClassicalOriginMemory - time.Minute, false},
		{"classical origin, once it lapsed", classical, tlsDest, "www.example.test", 2 * time.Minute, true},
		{"classical origin, learnt again", classical, tlsDest, "www.example.test", 0, false},
		{"hybrid origin", hybrid, tlsDest, "hybrid.example.test", 0, true},
		{"hybrid origin again", hybrid, tlsDest, "hybrid.example.test", 0, true},
		{"unverified classical origin", lax, tlsDest, "lax.example.test", 0, true},
		{"unverified classical origin again", lax, tlsDest, "lax.example.test", 0, true},
	}
	for i, st := range steps {
		clock.Add(int64(st.later))
		cs := bumpedGet(t, r, st.srv.conn(t), st.dest, client(st.name))
		if cs.HandshakeComplete != true {
			t.Fatalf("step %d, %s: client handshake not complete", i, st.what)
		}
		if got := st.srv.lastOfferedHybrid(t); got != st.wantHybrid {
			t.Fatalf("step %d, %s: hybrid offered %v, want %v", i, st.what, got, st.wantHybrid)
		}
	}
}

// TestOriginGroupsRedial: a further upstream connection of a bumped client
// connection is offered the groups as they stand when it is dialled, not
// as at the connection's first handshake.
func TestOriginGroupsRedial(t *testing.T) {
	r := newRig(t, testPolicy)
	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC).UnixNano())
	intercept.SetOriginGroupsClock(r.ic, func() time.Time { return time.Unix(0, clock.Load()) })
	srv := newOfferingServer(r.upLeaf("*.example.test"), tls.X25519)
	srv.closing = true
	cfg := &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}
	bumpedGet(t, r, srv.conn(t), tlsDest, cfg) // learns: classical
	c, _ := r.connect(srv.conn(t), tlsDest)
	tc := tls.Client(c, cfg)
	t.Cleanup(func() { tc.Close() })
	h := newHTTPClient(t, tc)
	if resp, body := h.do("GET /1 HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d %s", resp.StatusCode, body)
	}
	if srv.lastOfferedHybrid(t) {
		t.Fatal("the connection's first handshake offered the hybrids to an origin that just declined them")
	}
	clock.Add(int64(intercept.ClassicalOriginMemory + time.Minute))
	r.offerRedial(srv.conn(t))
	if resp, body := h.do("GET /2 HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != http.StatusOK {
		t.Fatalf("second request, on a new upstream connection: %d %s", resp.StatusCode, body)
	}
	if n := len(r.dialed()); n != 1 {
		t.Fatalf("%d upstream connections dialled, want 1", n)
	}
	if !srv.lastOfferedHybrid(t) {
		t.Error("the redial, after the memory lapsed, was offered classical groups only")
	}
}
