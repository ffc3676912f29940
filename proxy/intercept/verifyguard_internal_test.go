package intercept

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestVerifySlots: a client has at most maxClientVerifications under way;
// one more waits, and gives up when its wait runs out; another client is
// not held up; a client with none under way is forgotten.
func TestVerifySlots(t *testing.T) {
	v := newVerifySlots()
	v.limit = func() int { return 100 } // the clients' own bound alone
	a := clientKey{"vpce-a", netip.MustParseAddr("10.0.0.1")}
	b := clientKey{"vpce-b", netip.MustParseAddr("10.0.0.1")} // the same address behind another endpoint
	var held []func()
	for range maxClientVerifications {
		release, err := v.acquire(a, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, release)
	}
	start := time.Now()
	if _, err := v.acquire(a, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "verifications and leaf mints under way") {
		t.Fatalf("one more for the same client: %v, want it refused once its wait ran out", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("refused after %s, before its wait ran out", d)
	}
	releaseB, err := v.acquire(b, 0)
	if err != nil {
		t.Fatalf("another client: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		release, err := v.acquire(a, 5*time.Second)
		if err == nil {
			release()
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	held[0]()
	if err := <-got; err != nil {
		t.Fatalf("a waiter once a slot is free: %v", err)
	}
	for _, release := range held[1:] {
		release()
	}
	releaseB()
	if n := len(v.per); n != 0 {
		t.Errorf("%d clients remembered with nothing under way", n)
	}
}

// TestFailedChainsHoldNoCertificate: a hostile origin presents, per
// connection, a distinct untrusted leaf parsed from a certificate message
// as big as checkPresented lets through (crypto/tls keeps the message, and
// the leaf's Raw is a slice of it). A thousand failures remembered keep
// next to nothing alive: their reasons are text. Before, each held x509's
// error and with it the leaf and its message: 64 MiB here, 256 MiB with
// the 256 KiB messages Go accepts. A leaf in a bigger message is refused
// before x509 sees it.
func TestFailedChainsHoldNoCertificate(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ic := New(Config{UpstreamRoots: x509.NewCertPool(), HandshakeTimeout: time.Second})
	subj := policy.Subject{Endpoint: "vpce-1", Client: netip.MustParseAddr("10.0.0.9"), Dest: netip.MustParseAddrPort("203.0.113.7:443")}
	leaf := func(i, msgSize int) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: "evil"},
			DNSNames: []string{"a.example"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, msgSize) // the certificate message crypto/tls copied
		copy(msg, der)
		c, err := x509.ParseCertificate(msg[:len(der)])
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	verify := func(c ...*x509.Certificate) error {
		return ic.verifyUpstream(tls.ConnectionState{PeerCertificates: c}, "a.example", subj)
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range failedChainsSize {
		if err := verify(leaf(i, maxUpstreamChainBytes)); err == nil || !strings.Contains(err.Error(), "unknown authority") {
			t.Fatalf("leaf %d: %v, want unknown authority", i, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := len(ic.failed.members); n != failedChainsSize {
		t.Fatalf("%d failures remembered, want %d", n, failedChainsSize)
	}
	// The messages are 64 MiB in all; text and keys are under 1 MiB.
	grew := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d failures remembered; heap in use grew by %d KiB", failedChainsSize, grew>>10)
	if grew > 16<<20 {
		t.Errorf("heap in use grew by %d MiB: the failures keep their certificates", grew>>20)
	}
	runtime.KeepAlive(ic)

	before1 := ic.verifications.Load()
	err = verify(leaf(0, 256<<10))
	if want := "chain of more than 65536 bytes: not verified"; err == nil || err.Error() != want {
		t.Errorf("a leaf in a 256 KiB message: %v, want %q", err, want)
	}
	if ic.verifications.Load() != before1 {
		t.Error("a leaf in a 256 KiB message was verified")
	}
}

// TestFailureText: what is remembered and recorded of a failure is its
// text, cut short, never x509's error with the certificate in it.
func TestFailureText(t *testing.T) {
	cert := &x509.Certificate{Raw: make([]byte, 1<<10)}
	err := failureText(x509.UnknownAuthorityError{Cert: cert})
	if err.Error() != "x509: certificate signed by unknown authority" {
		t.Errorf("text %q", err)
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		t.Error("the x509 error, certificate and all, is kept")
	}
	err = failureText(fmt.Errorf("x509:  %s", strings.Repeat("é", 4000))) // cut mid-é
	if msg := err.Error(); len(msg) > maxFailureText+3 || !strings.HasSuffix(msg, "é...") || !utf8.ValidString(msg) {
		t.Errorf("%d bytes, ending %q", len(msg), msg[len(msg)-8:])
	}
}

// TestVerifySlotsClient: a client is what the flow table counts as one: an
// IPv6 /80 (a VPC may delegate one to an instance), or an IPv4 address,
// written plain or mapped. Before, every address of a /80 had slots of
// its own: 64 of them verified at once.
func TestVerifySlotsClient(t *testing.T) {
	v := newVerifySlots()
	v.limit = func() int { return 100 } // the clients' own bound alone
	got := 0
	for i := range 64 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 9: 1, 10: byte(i), 15: byte(i + 1)})
		if _, err := v.acquire(newClientKey("vpce-1", a), 0); err == nil {
			got++
		}
	}
	if got != maxClientVerifications {
		t.Errorf("%d verifications under way at once from one /80, want %d", got, maxClientVerifications)
	}
	busy := netip.MustParseAddr("2001:db8:0:0:1:77::7") // in the full /80
	if _, err := v.acquire(newClientKey("vpce-1", busy), 0); err == nil ||
		err.Error() != "the client's /80's 2 verifications and leaf mints under way did not end in time" {
		t.Errorf("a neighbour's slots refused: %v, want them named the /80's", err)
	}
	other := netip.MustParseAddr("2001:db8::2:0:0:1") // the next /80 of the same /64
	if _, err := v.acquire(newClientKey("vpce-1", other), 0); err != nil {
		t.Errorf("another /80: %v", err)
	}
	plain, mapped := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1")
	for range maxClientVerifications {
		if _, err := v.acquire(newClientKey("vpce-1", plain), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.acquire(newClientKey("vpce-1", mapped), 0); !errors.Is(err, errVerifyBusy) {
		t.Errorf("an IPv4 client written mapped: %v, want %v", err, errVerifyBusy)
	}
	if _, err := v.acquire(newClientKey("vpce-1", netip.MustParseAddr("10.0.0.2")), 0); err != nil {
		t.Errorf("the next IPv4 address: %v", err)
	}
}

// TestVerifySlotsGlobal: five clients, each with two verifications to do
// at once, have at most the global limit under way together, and each
// client at most its own two; all of them run in the end. Before, there
// was no global limit: ten ran at once, ten CPUs for five addresses.
func TestVerifySlotsGlobal(t *testing.T) {
	const limit, clients = 2, 5
	v := newVerifySlots()
	v.limit = func() int { return limit }
	var mu sync.Mutex
	running, peak := 0, 0
	perClient := map[int]int{}
	var wg sync.WaitGroup
	errs := make(chan error, clients*maxClientVerifications)
	for c := range clients {
		key := clientKey{"vpce-1", netip.AddrFrom4([4]byte{10, 0, 0, byte(c + 1)})}
		for range maxClientVerifications {
			wg.Go(func() {
				release, err := v.acquire(key, 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				running++
				peak = max(peak, running)
				if perClient[c]++; perClient[c] > maxClientVerifications {
					errs <- fmt.Errorf("client %d: %d under way", c, perClient[c])
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond) // a verification
				mu.Lock()
				running--
				perClient[c]--
				mu.Unlock()
				release()
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if peak != limit {
		t.Errorf("%d verifications under way at once, want %d", peak, limit)
	}
	if v.running != 0 || len(v.queue) != 0 || len(v.per) != 0 {
		t.Errorf("left: %d under way, %d waiting, %d clients", v.running, len(v.queue), len(v.per))
	}
}

// TestVerifySlotsFair: with every slot taken, a freed one goes to a client
// with none under way before a client with one under way already, though
// the latter asked first; and a wait that runs out for want of a global
// slot says so. Before, the client with one under way took its second
// slot at once: nothing was shared.
func TestVerifySlotsFair(t *testing.T) {
	v := newVerifySlots()
	v.limit = func() int { return 2 }
	a := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.1")}
	b := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.2")}
	c := clientKey{"vpce-1", netip.MustParseAddr("10.0.0.3")}
	releaseA, err := v.acquire(a, 0)
	if err != nil {
		t.Fatal(err)
	}
	releaseC, err := v.acquire(c, 0)
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		release func()
		err     error
	}
	wait := func(k clientKey) chan got {
		ch := make(chan got, 1)
		mu := func() int { v.mu.Lock(); defer v.mu.Unlock(); return len(v.queue) }
		before := mu()
		go func() {
			release, err := v.acquire(k, 10*time.Second)
			ch <- got{release, err}
		}()
		// Queued, so that the order is a's, then b's (or, granted at once,
		// never queued: what follows fails then).
		for deadline := time.Now().Add(time.Second); mu() == before && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		return ch
	}
	secondA := wait(a) // a has one under way
	firstB := wait(b)  // b has none
	select {
	case g := <-secondA:
		t.Fatalf("a's second with every slot taken: %v", g.err)
	case g := <-firstB:
		t.Fatalf("b's first with every slot taken: %v", g.err)
	case <-time.After(50 * time.Millisecond):
	}
	releaseC()
	var gb got
	select {
	case gb = <-firstB:
		if gb.err != nil {
			t.Fatal(gb.err)
		}
	case g := <-secondA:
		t.Fatalf("the freed slot went to a, which has one under way, before b, which has none (err %v)", g.err)
	case <-time.After(5 * time.Second):
		t.Fatal("the freed slot went to nobody")
	}
	gb.release()
	select {
	case ga := <-secondA:
		if ga.err != nil {
			t.Fatal(ga.err)
		}
		ga.release()
	case <-time.After(5 * time.Second):
		t.Fatal("a's second: still waiting with a slot free")
	}

	// Both slots taken, by a and b: c, with none of its own under way,
	// waits out its turn, and is told the appliance's slots were busy.
	releaseB, err := v.acquire(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.acquire(c, 20*time.Millisecond); !errors.Is(err, errVerifyQueue) || noVerdict(err) == nil {
		t.Errorf("c with every slot taken: %v, want %v", err, errVerifyQueue)
	}
	releaseA()
	releaseB()
	if v.running != 0 || len(v.queue) != 0 || len(v.per) != 0 {
		t.Errorf("left: %d under way, %d waiting, %d clients", v.running, len(v.queue), len(v.per))
	}
}

// TestGlobalVerifications: the limit follows GOMAXPROCS as it is now,
// which package procs changes at run time: half of it, at least one.
func TestGlobalVerifications(t *testing.T) {
	defer func(c int) { procsCeiling = c }(procsCeiling)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for procs, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 8: 4} {
		procsCeiling = procs
		runtime.GOMAXPROCS(1) // lowered while quiet: the cap stays the ceiling's
		if got := globalVerifications(); got != want {
			t.Errorf("%d processors, GOMAXPROCS lowered to 1: %d, want %d", procs, got, want)
		}
	}
}
