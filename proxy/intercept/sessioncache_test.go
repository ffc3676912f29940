package intercept

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestOriginSessionsBoundedInBytes: an origin whose chain verifies pads
// its certificate message with a 60 KiB OCSP staple (what one extension
// holds), for each of many destination ports, over loopback TLS 1.3. Each
// session is kept, and the heap grows by no more than the cache's byte
// bound: 8 MiB. Before, sessions were bounded in number only, and 384 of
// them kept their messages: 24 MiB (1,024 at checkPresented's 64 KiB, or
// Go's 256 KiB message limit, 64 or 256 MiB). The last is still resumed.
func TestOriginSessionsBoundedInBytes(t *testing.T) {
	addr, roots := stapledOrigin(t, tls.VersionTLS13, 60<<10, 0)
	res := newResumption(nil)
	connect := func(port uint16) bool {
		t.Helper()
		sessions := res.originSessions(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port))
		sessions.verified.Store(true)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc := tls.Client(c, &tls.Config{ServerName: originName, RootCAs: roots, ClientSessionCache: sessions})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(tc, make([]byte, 1)); err != nil { // the tickets come before it
			t.Fatal(err)
		}
		return tc.ConnectionState().DidResume
	}
	connect(1) // what the first connection allocates once
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 384
	for i := range n {
		connect(uint16(1000 + i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d sessions with 60 KiB staples: heap in use grew by %d MiB", n, grew>>20)
	if grew > originSessionCacheBytes+4<<20 {
		t.Errorf("heap in use grew by %d MiB, bound %d MiB", grew>>20, originSessionCacheBytes>>20)
	}
	if !connect(1000 + n - 1) {
		t.Error("the last session was not resumed")
	}
}

// TestSessionCacheBounds: sessions are dropped, least recently used first,
// past the bound in number or in bytes; one bigger than the whole bound is
// not kept; nil removes.
func TestSessionCacheBounds(t *testing.T) {
	c := newSessionCache(3, 1000)
	put := func(key string, size int) {
		c.keep(&storedSession{key: key, state: make([]byte, size-len(key))})
	}
	has := func(keys ...string) {
		t.Helper()
		if len(c.byKey) != len(keys) {
			t.Errorf("%d sessions kept, want %v", len(c.byKey), keys)
		}
		for _, k := range keys {
			if _, ok := c.byKey[k]; !ok {
				t.Errorf("%q dropped", k)
			}
		}
	}
	put("a", 100)
	put("b", 100)
	put("c", 100)
	put("d", 100) // one too many
	has("b", "c", "d")
	if _, ok := c.Get("b"); ok { // used: now the most recent
		t.Error("a session that is not one resumed")
	}
	has("c", "d") // and dropped, as it did not decode
	put("e", 801) // too many bytes
	has("d", "e")
	put("f", 1001) // more than all
	has("d", "e")
	c.Put("d", nil)
	has("e")
	if c.bytes != 801 {
		t.Errorf("%d bytes counted, want 801", c.bytes)
	}
}

// lastSession is a tls.ClientSessionCache that keeps the last session put.
type lastSession struct{ cs *tls.ClientSessionState }

func (c *lastSession) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (c *lastSession) Put(_ string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.cs = cs
	}
}

// TestSessionPutsRateLimited: crypto/tls puts every ticket an origin sends,
// and a stored session is encoded, chain and staple: an origin sending
// tickets as fast as crypto/tls takes them (16 per byte of data) made the
// appliance encode 66 KiB for each, 30 µs of CPU per 20-odd bytes it sent.
// A key's session is now replaced at most once a second: 10,000 puts of a
// session with a 60 KiB staple allocate next to nothing after the first.
func TestSessionPutsRateLimited(t *testing.T) {
	addr, _ := stapledOrigin(t, tls.VersionTLS13, 60<<10, 0)
	got := &lastSession{}
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: originName, InsecureSkipVerify: true, ClientSessionCache: got})
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(c, make([]byte, 1))
	c.Close()
	if got.cs == nil {
		t.Fatal("the origin's ticket never came")
	}

	sc := newSessionCache(originSessionCacheSize, originSessionCacheBytes)
	sc.Put("k", got.cs)
	first := sc.byKey["k"].Value.(*storedSession)
	if sc.bytes < 60<<10 {
		t.Fatalf("%d bytes kept, want the session with its staple", sc.bytes)
	}
	const n = 10000
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for range n {
		sc.Put("k", got.cs)
	}
	runtime.ReadMemStats(&m1)
	perPut := (m1.TotalAlloc - m0.TotalAlloc) / n
	t.Logf("%d bytes allocated per put after the first", perPut)
	if perPut > 1024 {
		t.Errorf("%d bytes allocated per put of a session stored a moment ago, want next to none", perPut)
	}
	if sc.byKey["k"].Value.(*storedSession) != first {
		t.Error("the session stored a moment ago was replaced")
	}
	first.at = first.at.Add(-sessionPutEvery) // a second on
	sc.Put("k", got.cs)
	if sc.byKey["k"].Value.(*storedSession) == first {
		t.Error("a session stored a second ago was not replaced")
	}
	if sc.Put("k", nil); len(sc.byKey) != 0 {
		t.Error("nil did not remove the session stored a moment ago")
	}
}

// TestResumedChainPassesCheck: a chain of a 13 KiB leaf with a 56 KiB
// staple (TLS 1.2 sends the staple in a message of its own) passes
// checkPresented on the full handshake. Resumed from the session cache,
// the decoded leaf's Raw reaches to the end of the session's encoding,
// staple included, and the message bound refused it, on every later
// connection. A resumed chain is bounded by the cache instead.
func TestResumedChainPassesCheck(t *testing.T) {
	addr, _ := stapledOrigin(t, tls.VersionTLS12, 56<<10, 300) // about 12 KiB of names, as big SAN certificates have
	sessions := newResumption(nil).originSessions(netip.MustParseAddrPort(addr))
	for i := range 2 {
		var checked, unbounded error
		var resumed bool
		cfg := &tls.Config{ServerName: originName, InsecureSkipVerify: true, ClientSessionCache: sessions,
			MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				resumed = cs.DidResume
				checked = checkPresented(cs.PeerCertificates, cs.DidResume)
				unbounded = checkPresented(cs.PeerCertificates, false)
				sessions.verified.Store(checked == nil)
				return nil
			}}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadFull(c, make([]byte, 1))
		c.Close()
		if resumed != (i == 1) {
			t.Fatalf("connection %d resumed %v", i, resumed)
		}
		if checked != nil {
			t.Errorf("connection %d (resumed %v): %v", i, resumed, checked)
		}
		if i == 1 && unbounded == nil {
			t.Log("the decoded leaf stayed within the message bound here: the resumed case shows nothing")
		}
		c = nil
		for range 3 { // no connection holds the certificates: decoded anew
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// originName is the name stapledOrigin's certificate is for.
const originName = "a.example.test"

// stapledOrigin serves TLS at version on loopback for originName, from a
// self-signed certificate with extraNames more names, stapling staple
// bytes; each connection gets one byte of data once its handshake (and
// its tickets) are done. It returns its address and a pool trusting it.
func stapledOrigin(t *testing.T, version uint16, staple, extraNames int) (string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: originName}, DNSNames: []string{originName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for i := range extraNames {
		tmpl.DNSNames = append(tmpl.DNSNames, "host-"+strconv.Itoa(1000+i)+".example-customer-domain.test")
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	scfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, OCSPStaple: make([]byte, staple)}},
		MinVersion: version, MaxVersion: version}
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) {
		s := tls.Server(c, scfg)
		s.SetDeadline(time.Now().Add(5 * time.Second))
		if s.Handshake() == nil {
			s.Write([]byte("x")) // after the tickets
		}
	})
	return ln.Addr().String(), roots
}
