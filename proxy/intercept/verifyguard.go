package intercept

import (
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
)

// What an upstream's chain may cost the appliance.
//
// The origin of a bumped connection is whoever the client dialled, so its
// certificate chain is the client's to choose, and over TLS 1.2 it is a
// canned, plaintext message that costs the sender nothing. x509 builds
// chains by trying, for each certificate, every presented certificate
// named as its issuer, up to 100 signature checks per verification: a leaf
// naming issuer "I" with 100 P-521 "intermediates" all named "I" costs
// about 180 ms of CPU per connection (TestHostileChainCheap). So before
// x509 sees a chain:
//
//   - it may hold at most maxUpstreamChain certificates, of at most
//     maxUpstreamChainBytes in all;
//   - no three different intermediates may share a subject, and no two
//     subjects may be presented twice: the branching the attack needs.
//     With one candidate per name, chain building is a single path, one
//     signature check (two where a presented certificate names a trusted
//     root as issuer) per certificate. A subject presented twice (a root
//     sent self-signed and cross-signed, which honest servers do for old
//     clients) forks that path once: each copy is tried as the parent of
//     whatever names it, and the part above is walked once per copy, so
//     the search costs at most about twice a single path (no path holds
//     a certificate twice, so coming to the subject again along a path
//     offers only the copy not taken yet: no second fork). A second
//     subject presented twice would double it again, and n of them
//     2^n times: that is what stays refused;
//   - a chain that failed for a destination and name is remembered for
//     failedChainMemory, with its reason: the same chain again costs a
//     hash. The reason is kept as text, cut to maxFailureText: x509's
//     errors hold the certificate, whose Raw slices the whole certificate
//     message crypto/tls copied (up to 256 KiB), so a thousand failures
//     of distinct padded leaves would otherwise keep 256 MiB alive;
//   - no presented certificate may hold an RSA key over 4096 bits or with
//     an exponent over 65537 (checkPresentedKey): either makes each
//     signature check up to 50 times dearer than an honest one;
//   - a client (an IPv4 address or an IPv6 prefix, as the flow table counts
//     one) has at most maxClientVerifications verifications that are not
//     taken from memory under way at once, and all clients together at
//     most globalVerifications (half the processors, at least one),
//     handed out in turn to the clients with the fewest under way, and
//     among those to the one served least recently (verifySlots); further
//     ones wait, up to half the handshake timeout (verifyWait), and one
//     that waits that long is an error, not a verdict on the chain
//     (errVerifyBusy, errVerifyQueue). Leaf mints share these slots
//     (mintslot.go). A hostile client varies a byte (or the destination
//     port) per connection to miss the memory, and then holds at most two
//     CPUs, and hostile clients together half the appliance's; an honest
//     client's new chain goes ahead of every waiting verification of a
//     client with one under way already, and where the limit is one (2
//     processors) it waits for at most the one under way and one turn of
//     each other client waiting, however many each has queued. The worst
//     chain that passes the checks above, a pair of P-521 CAs of one subject over 7 more in a
//     line under one naming a trusted root (TestSubjectTwiceCheap), costs
//     about 40 ms, and 9 in a line without the pair about 25 ms (against
//     0.1 ms for an honest chain, and 280 ms for the 100 "I"s). Honest
//     clients hardly notice: verifications that worked are remembered for
//     minutes (verifycache.go), and a new one takes well under a
//     millisecond.

// maxUpstreamChain bounds the certificates an upstream may present. Public
// chains are 2 to 4: the leaf, one or two intermediates, sometimes a
// cross-signed root a server sends for old clients. Private PKIs rarely
// go deeper than 3 CAs. 10 leaves room for any of these, and caps the
// signature checks of one verification near 20, 40 with a subject
// presented twice (TestHostileChainCheap and TestSubjectTwiceCheap
// measure the worst).
const maxUpstreamChain = 10

// maxUpstreamChainBytes bounds the bytes of the certificates an upstream
// presents, and of the message each was parsed from. Public chains are a
// few KiB (a leaf of 1 to 2, more with a hundred names; 1 to 2 per
// intermediate), and an OCSP staple and SCTs add a few more; 64 KiB is
// many times any of them. Go accepts certificate messages of up to
// 256 KiB, and whatever of a chain is kept (the session cache's verified
// sessions, resume.go) keeps its whole message alive.
const maxUpstreamChainBytes = 64 << 10

// maxFailureText bounds the reason a failed verification is remembered
// and recorded with: x509's hostname error lists every name of the
// certificate, as many as the origin put in it.
const maxFailureText = 1024

// failedChainMemory bounds how long a failed verification is taken as
// read: long enough that repeating a chain costs nothing, short enough
// that an origin that fixed its certificate, or one not valid yet, is soon
// verified again.
const failedChainMemory = time.Minute

// failedChainsSize bounds the failed verifications remembered.
const failedChainsSize = 1024

// maxClientVerifications bounds a client's verifications under way at
// once. Two, not one: instances behind one NAT are one client, and with a
// single slot a hostile neighbour's queue of 40 ms chains would make an
// honest new chain wait its turn behind all of them. With two, an honest
// verification waits for at most the one the neighbour has under way in
// the other slot, at the cost of a second CPU the neighbour may hold.
const maxClientVerifications = 2

// verifyWait is how long a verification waits for one of its client's
// slots, given the handshake's timeout: half of it, so that the wait ends
// before the handshake does and the record says why.
func verifyWait(handshakeTimeout time.Duration) time.Duration { return handshakeTimeout / 2 }

// errVerifyBusy is a verification or a leaf's mint (mintslot.go) that
// never ran: the client's slots stayed taken for as long as its handshake
// may last. It says nothing of the chain, so the bump ends as an error,
// not as a certificate refused (bumpfail.go, mintFailed), and nothing is
// remembered of it. acquire wraps it with whose slots they were
// (clientkey.Holder: an IPv6 client's are its prefix's, which a neighbour
// may hold), and its caller with what never ran ("not verified", "not
// minted").
var errVerifyBusy = errors.New("did not end in time")

// errVerifyQueue is a verification or a mint that never ran, as
// errVerifyBusy, but for want of one of everyone's slots
// (globalVerifications): other clients' turns came first for as long as
// its handshake may last. It ends the bump the same way.
var errVerifyQueue = errors.New("the appliance's verifications and leaf mints under way did not end in time")

// noVerdict returns err when it is no verdict on the chain (the handshake
// then ends there), else nil.
func noVerdict(err error) error {
	if errors.Is(err, errVerifyBusy) || errors.Is(err, errVerifyQueue) {
		return err
	}
	return nil
}

// failedChain names a chain as presented, the name it failed for, and the
// destination that presented it.
type failedChain struct {
	dest netip.AddrPort
	verifiedChain
}

// checkPresented refuses what no honest chain looks like, before x509
// spends a signature check on it. A resumed session's certificates were
// decoded from the session cache, which bounds them in bytes already, and
// their Raw reaches to the end of the session's encoding (its staple, the
// rest of the chain): the message bound would refuse on resumption a
// chain it let through on the full handshake, session after session.
func checkPresented(presented []*x509.Certificate, resumed bool) error {
	if len(presented) > maxUpstreamChain {
		return fmt.Errorf("chain of %d certificates, more than %d: not verified", len(presented), maxUpstreamChain)
	}
	size := 0
	for _, c := range presented {
		// cap: what the certificate keeps alive of the message crypto/tls
		// parsed it from (Raw is a slice of it), padding and all.
		size += len(c.Raw)
		if size > maxUpstreamChainBytes || !resumed && cap(c.Raw) > maxUpstreamChainBytes {
			return fmt.Errorf("chain of more than %d bytes: not verified", maxUpstreamChainBytes)
		}
	}
	for _, c := range presented {
		if err := checkPresentedKey(c); err != nil {
			return err
		}
	}
	inter := presented[1:]
	twice := "" // the subject presented twice, if one is
	for i, c := range inter {
		if named(inter[:i], c.RawSubject) > 0 {
			continue // counted with the first of its name
		}
		switch n := named(inter[i:], c.RawSubject); {
		case n > 2:
			return fmt.Errorf("%d different intermediates named %q: not verified", n, c.Subject.String())
		case n == 2 && twice != "":
			return fmt.Errorf("intermediates named %q and %q presented twice each: not verified", twice, c.Subject.String())
		case n == 2:
			twice = c.Subject.String()
		}
	}
	return nil
}

// maxPresentedRSABits and maxPresentedRSAExponent bound the RSA keys an
// upstream may present. Checking a signature costs with the issuer's
// modulus and the bits of its exponent: an RSA-8192 key with e = 2^31-1
// (the most crypto/tls and crypto/rsa accept) costs about 5 ms a check,
// against 0.1 ms for RSA-2048 and 0.6 ms for RSA-4096 with e = 65537, and
// 1.8 ms for P-521, the dearest key that passes; a line of 9 such RSA CAs
// would cost about 45 ms per verification, 90 with a subject presented
// twice. Public CAs issue up to 4096 bits with e = 65537, and no trusted
// root is bigger. Smaller exponents cost less and stay: trusted roots with
// e = 3 (Go Daddy and Starfield Class 2) and e = 43147 are still sent in
// chains for old clients, and refusing them would refuse those chains.
const (
	maxPresentedRSABits     = 4096
	maxPresentedRSAExponent = 65537
)

// checkPresentedKey refuses a presented certificate whose RSA key is
// dearer to check signatures with than any honest one.
func checkPresentedKey(c *x509.Certificate) error {
	k, ok := c.PublicKey.(*rsa.PublicKey)
	switch {
	case !ok:
		return nil
	case k.N.BitLen() > maxPresentedRSABits:
		return fmt.Errorf("RSA key of %d bits in %q, over %d: not verified", k.N.BitLen(), c.Subject.String(), maxPresentedRSABits)
	case k.E > maxPresentedRSAExponent:
		return fmt.Errorf("RSA public exponent %d in %q, over %d: not verified", k.E, c.Subject.String(), maxPresentedRSAExponent)
	}
	return nil
}

// named returns how many different certificates of certs have subject. The
// same certificate twice (a server sending its chain file twice over) is
// harmless: x509 adds it to the pool once.
func named(certs []*x509.Certificate, subject []byte) int {
	n := 0
	for i, c := range certs {
		if string(c.RawSubject) != string(subject) {
			continue
		}
		n++
		for _, d := range certs[:i] {
			if string(d.Raw) == string(c.Raw) {
				n-- // counted already
				break
			}
		}
	}
	return n
}

// failureText returns a failed verification as its reason alone, cut to
// maxFailureText: what may be remembered and recorded of it, with no
// certificate held.
func failureText(err error) error {
	msg := err.Error()
	if len(msg) > maxFailureText {
		msg = strings.ToValidUTF8(msg[:maxFailureText], "") + "..."
	}
	return errors.New(msg)
}

// clientKey names a client: addresses may overlap across GWLB endpoints.
type clientKey struct {
	endpoint string
	addr     netip.Addr
}

// newClientKey names the client of addr as the flow table and the proxy's
// shares count one (package clientkey says why): an IPv4 address, or an
// IPv6 address's prefix (--ipv6-client-prefix).
func newClientKey(endpoint string, addr netip.Addr) clientKey {
	return clientKey{endpoint, clientkey.Of(addr)}
}

// verifySlots bounds the verifications under way, and the leaf mints
// (mintslot.go), together: each client's, to maxClientVerifications, and
// everyone's, to globalVerifications. Those that find no slot wait in one
// queue, and a freed slot goes to a waiter of the clients with the fewest
// under way, and of those to the client granted one least recently (one
// that came since counting as granted just before the latest grant), its
// first waiter: a client with none under way is
// served before one with one, whenever it came, and clients with as many
// under way take turns. Turns matter where the limit is one (a 2-vCPU
// appliance): a client whose mint just ended has none under way again as
// the slot is handed on, as many as a client waiting for its first, and
// by the queue's order alone it took the slot back for every one it had
// queued first, an honest client's one mint waiting behind them all until
// its wait ran out (review rev30b F1). In turns, an honest client waits for
// at most one grant per other client waiting.
type verifySlots struct {
	mu      sync.Mutex
	per     map[clientKey]*clientSlots
	running int           // verifications under way, every client's
	queue   []*slotWaiter // waiting, in the order they came
	grants  uint64        // slots granted so far: the turns' clock
	// limit is the most verifications under way at once, read at every
	// take and give back: globalVerifications, or a test's.
	limit func() int
}

type clientSlots struct {
	running int // under way
	users   int // under way or waiting
	// lastGrant orders the clients' turns: twice v.grants as of the
	// client's latest grant, or, for a client granted none since it came,
	// one less than the latest grant's (acquire).
	lastGrant uint64
}

// slotWaiter is a verification waiting for a slot; granted is closed when
// it has one.
type slotWaiter struct {
	cs      *clientSlots
	granted chan struct{}
}

func newVerifySlots() *verifySlots {
	return &verifySlots{per: make(map[clientKey]*clientSlots), limit: globalVerifications}
}

// acquire takes one of client's slots, and one of everyone's, waiting at
// most wait for them; the function it returns gives them back.
func (v *verifySlots) acquire(client clientKey, wait time.Duration) (release func(), err error) {
	v.mu.Lock()
	cs := v.per[client]
	if cs == nil {
		// A client comes (or comes back: it is forgotten once it has
		// nothing under way or waiting) after those granted before it
		// and before the one granted last. With "never granted" first,
		// two hostile clients each keeping one mint in flight came back
		// ahead of every waiter at each turn, and an honest client's
		// second wait was never served (review rev30d F1).
		cs = &clientSlots{lastGrant: max(2*v.grants, 1) - 1}
		v.per[client] = cs
	}
	cs.users++
	w := &slotWaiter{cs: cs, granted: make(chan struct{})}
	// Queued first, then served in turn: a slot that came free when the
	// limit rose goes to whoever waited, not to this late comer.
	v.queue = append(v.queue, w)
	v.grant()
	v.mu.Unlock()
	release = func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		cs.running--
		v.running--
		v.leave(client, cs)
		v.grant()
	}
	select {
	case <-w.granted:
		return release, nil
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.granted:
		return release, nil
	case <-t.C:
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	select {
	case <-w.granted: // granted as the wait ran out: taken
		return release, nil
	default:
	}
	v.queue = slices.DeleteFunc(v.queue, func(q *slotWaiter) bool { return q == w })
	v.leave(client, cs)
	if cs.running >= maxClientVerifications {
		return nil, fmt.Errorf("%s's %d verifications and leaf mints under way %w",
			clientkey.Holder(client.addr), maxClientVerifications, errVerifyBusy)
	}
	return nil, errVerifyQueue
}

// grant hands the free slots to the waiters whose turn it is: of those
// whose client has a slot of its own free, the first waiter of the client
// with the fewest under way, and of those the client granted one least
// recently (verifySlots). v.mu is held.
func (v *verifySlots) grant() {
	for limit := v.limit(); v.running < limit; {
		next := -1
		for i, w := range v.queue {
			if w.cs.running < maxClientVerifications && (next < 0 || w.cs.before(v.queue[next].cs)) {
				next = i
			}
		}
		if next < 0 {
			return
		}
		w := v.queue[next]
		v.queue = slices.Delete(v.queue, next, next+1)
		v.grants++
		w.cs.running++
		w.cs.lastGrant = 2 * v.grants // even: a newcomer's odd turn falls between two grants
		v.running++
		close(w.granted)
	}
}

// before reports whether cs's turn comes before o's: fewer under way, or
// as many and granted one less recently. A client's waiters are never
// before one another, so the first of them is served first.
func (cs *clientSlots) before(o *clientSlots) bool {
	if cs.running != o.running {
		return cs.running < o.running
	}
	return cs.lastGrant < o.lastGrant
}

// leave forgets a client no verification of which is under way or
// waiting. v.mu is held.
func (v *verifySlots) leave(client clientKey, cs *clientSlots) {
	if cs.users--; cs.users == 0 {
		delete(v.per, client)
	}
}

// globalVerifications is the most verifications under way at once, for
// every client together: half the processors the appliance may use, at
// least one. Half of procsCeiling, not of GOMAXPROCS now: package procs
// lowers GOMAXPROCS while the appliance is quiet and raises it only when
// the processors it has are busy, which verifications waiting for a slot
// (parked, not running) never make them; a cap read from a lowered
// GOMAXPROCS would stay at one on an 8-core appliance through a flood of
// dear chains, every honest new chain queued behind it.
func globalVerifications() int { return max(1, procsCeiling/2) }

// procsCeiling is GOMAXPROCS as the runtime chose it at start (the CPUs
// the process may use), before package procs adjusts it; a variable for
// tests.
var procsCeiling = runtime.GOMAXPROCS(0)

// minRSABits is the smallest RSA key a verified chain may hold. x509
// accepts 1024-bit keys, which are within reach of a well-funded attacker
// and have not been issued by public CAs since 2013; a bumped client
// would see only the appliance's P-256 leaf, never how weak the origin's
// proof was.
const minRSABits = 2048

// checkKeys refuses the chains x509 built unless one of them holds no RSA
// key under minRSABits.
func checkKeys(chains [][]*x509.Certificate) error {
	var weak error
	for _, chain := range chains {
		weak = nil
		for _, c := range chain {
			if k, ok := c.PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() < minRSABits {
				weak = fmt.Errorf("RSA key of %d bits in %q, under %d", k.N.BitLen(), c.Subject.String(), minRSABits)
				break
			}
		}
		if weak == nil {
			return nil
		}
	}
	return weak
}
