// Package intercept serves the TCP connections the appliance reads into:
// cleartext HTTP and bumped TLS. It completes the bump handshake (upstream
// first, verified, then the client with a leaf from the CA), pins every
// upstream connection to the flow's original destination, decides and
// records each HTTP request on its own, and serves HTTP/1 and HTTP/2
// through goproxy, which stays behind this package's one entry point,
// Interceptor.Serve.
//
// It needs no packet stack: a Session is any pair of net.Conns, so it can be
// tested with net.Pipe and crypto/tls alone.
package intercept

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// Config configures an Interceptor.
type Config struct {
	// Records receives one record per request, and one per bumped
	// connection.
	Records *records.Writer
	// Minter mints the leaves of bumped connections; without it nothing is
	// bumped and the trust host is answered over cleartext HTTP only.
	Minter *certs.Minter
	// UpstreamRoots verify bumped destinations (nil: the system roots).
	UpstreamRoots *x509.CertPool
	// Trust answers requests for TrustHost (the CA-trust page).
	Trust     http.Handler
	TrustHost string
	// MaxHeaderBytes bounds an HTTP/1 request head and an HTTP/2 header
	// list (default 64 KiB, at most MaxMaxHeaderBytes).
	MaxHeaderBytes int
	// HandshakeTimeout bounds each TLS handshake, upstream and client
	// (default 10 s).
	HandshakeTimeout time.Duration
	// Dial opens a further connection to the session's destination, when
	// the client's requests need more than the one dialled already.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// DialFailed, when set, is called when a bump's destination, handed
	// over with nothing dialled, cannot be dialled (dialBumped).
	DialFailed func()
	// DestinationCheck, when set, ties a request allowed by a rule with
	// domains to the destination: nil when dest is an address name
	// resolves to from GWLB endpoint endpoint, an error saying why not
	// otherwise (see proxy.Config.DestinationCheck).
	DestinationCheck func(ctx context.Context, endpoint, name string, dest netip.Addr) error
	// DestinationCheckTimeout bounds each DestinationCheck call (default
	// 5 s); a check that runs out fails.
	DestinationCheckTimeout time.Duration
	// DNSGeneration and DestinationLookedUp are proxy.Config's: with
	// DNSGeneration set, a pass of DestinationCheck that
	// DestinationLookedUp does not vouch for rested on an observed DNS
	// answer, and is checked again after a reload that forgot it
	// (destcheck.go). Neither may block.
	DNSGeneration       func() uint64
	DestinationLookedUp func(name string, dest netip.Addr) bool
	// KeyLogWriter, when set, receives the secrets of both TLS sessions of
	// every bumped connection, the client's and the upstream's (and of
	// the trust page's), in NSS key log format (tls.Config.KeyLogWriter):
	// what lets Wireshark decrypt a capture of them. It must be safe for
	// concurrent use.
	KeyLogWriter io.Writer
	// Plaintext, when set, receives the decrypted bytes of every bumped
	// connection (plaintext.go).
	Plaintext Plaintext
	// Policy, when set, decides each HTTP request by the policy in force
	// as it arrives, so a reload reaches open connections' next requests;
	// without it (or before it holds one) Session.Policy decides them.
	Policy *policy.Holder
	// DenyRecord, when set, is asked before each denied request's record
	// is written (rec, its client's): whether it may be, and how many of
	// the client's went unrecorded before it. A denial not recorded is
	// still counted (Denied); counting it as unrecorded is DenyRecord's.
	DenyRecord func(rec *records.Record) (ok bool, skipped int)
	// TrustRecord, when set, is asked the same before the record of each
	// request the trust page answers: one costs a client a few bytes, like
	// a denied request.
	TrustRecord func(rec *records.Record) (ok bool, skipped int)
	// RequestText, when set, is given each record a client's requests
	// make just before it is written (rec, its client's): a request's
	// path, User-Agent and method are as long as the client likes, up to
	// MaxHeaderBytes, so it may cut them (records.Record.CutClientText)
	// once the client has had its share of such text recorded whole.
	RequestText func(rec *records.Record)
	// ShuttingDown, when set, reports whether the appliance's packet
	// stacks are closing: a request whose client connection is lost then
	// is recorded as ended by the shutdown, not by its client.
	ShuttingDown func() bool
	// WriteStallTimeout, when set, is the write-stall timeout in force
	// (shortened while memory is short): a WebSocket tunnel's linger,
	// after its client broke after its FIN, lasts no longer than it, nor
	// than TunnelLingerBound.
	WriteStallTimeout func() time.Duration
}

// DefaultMaxHeaderBytes is the default request head limit: Squid's, and
// far above what browsers send (they cap cookies at about 4 KiB each).
const DefaultMaxHeaderBytes = 64 << 10

// MaxMaxHeaderBytes is the largest request head limit that holds for
// HTTP/2 as well: goproxy's HTTP/2 server refuses a header list beyond
// net/http's default, 1 MiB (with x/net's allowance of 32 bytes for ten
// fields), and cannot be configured. A larger limit would let lists in
// between reach that server, which ends the connection with a protocol
// error: no 431, and no record of the request.
const MaxMaxHeaderBytes = http.DefaultMaxHeaderBytes

// Session is one TCP connection handed over for interception.
type Session struct {
	Client net.Conn // the client, its sniffed bytes still to read
	// Upstream is the destination, dialled already; nil when only a name
	// could let it through. A bump then dials it once its destination
	// check has passed (dialBumped), and sets it here; cleartext HTTP (or
	// the trust page) dials each connection for a request the policy
	// allowed, as later ones always are.
	Upstream net.Conn
	Policy   *policy.Policy  // in force when the connection arrived: it decides the connection
	Subject  policy.Subject  // addresses and endpoint, for each request's decision
	Record   *records.Record // the connection's record so far; each request's record starts from it
	Start    time.Time

	// What classification found: a ClientHello the policy decided to bump
	// (Decision), or else cleartext HTTP: its first request head (nil when
	// unreadable), or HTTP/2 with prior knowledge (H2C).
	Hello    *sniff.ClientHello
	Decision policy.Decision
	HTTP     *sniff.HTTPRequest
	H2C      bool
	// HTTPHeadCut says classification stopped before HTTP's head ended
	// (it waited long enough, or read its fill): a Host it did not see
	// may still come.
	HTTPHeadCut bool

	// Done is called once, when the session has ended and its records are
	// written.
	Done func()
	// ReleaseWaiting, when set, gives back the connection's slot in its
	// client's share of connections waiting (proxy/tcpname.go): called
	// once, for a bump with no Upstream when its destination's dial has
	// ended (dialBumped), and otherwise when the session is handed over or
	// ends, whichever comes first.
	ReleaseWaiting func()
	// WatchUpstream, when set, is called with each further connection to
	// the destination the session dials (besides Upstream), as dialled,
	// before any TLS: what watches Client and Upstream from outside (the
	// proxy's write-stall bound) can watch it too. The function it
	// returns, if any, is called when that connection closes.
	WatchUpstream func(c net.Conn) (unwatch func())
	// WatchStream, when set, is called for each response body relayed to
	// an HTTP/2 client's stream, whose writes no connection's watch sees
	// wait (streamwatch.go); unwatch, if not nil, is called once the
	// relay has ended.
	WatchStream func() (w WriteWaiter, unwatch func())

	// upstreams are the connections the session's HTTP transport dialled
	// besides Upstream: all closed when it ends, pooled or not.
	upstreams connSet
	// aborted says why Abort ended the session, once it has; abortedCh
	// is closed then (abort.go), made on first use under upMu.
	aborted   atomic.Pointer[abortReason]
	abortedCh chan struct{}
	// serving is the session's goproxy side once it serves requests;
	// lateBreak is why AbortUnlessIdle left it be (abort.go).
	serving   atomic.Pointer[roundTripper]
	lateBreak atomic.Pointer[abortReason]
	// lingerCut cuts the tunnel's linger short after one look
	// (CutLinger).
	lingerCut atomic.Pointer[lingerCutReason]
	// tunnel is the session's WebSocket tunnel's body, once it has one
	// (BoundTunnelUpload).
	tunnel atomic.Pointer[upgradedBody]
	// broke says whether a request was under way when the client's
	// connection was first seen broken, finBreak whether that break came
	// after the client's FIN, and breakCh, once a tunnel asked for it, is
	// closed by the break (breakClosed: closed already), once it is known
	// for one (brokenSeen: ClientBroken) (clientbreak.go).
	broke       atomic.Int32
	finBreak    atomic.Bool
	brokenSeen  atomic.Bool
	breakCh     atomic.Pointer[chan struct{}]
	breakClosed atomic.Bool
	// breakTakenCh is closed once the client watch has taken what broke
	// the client's connection (ClientBreakTaken), made on first use
	// under upMu; breakTaken says it is closed.
	breakTakenCh chan struct{}
	breakTaken   bool
	// upMu orders dialBumped's setting of Upstream with Abort's reading
	// of it, which may run on another goroutine (the proxy's watches).
	upMu sync.Mutex
	// upCounted counts Upstream's bytes once the session wraps it: Abort
	// resets it through that, which leaves out what it never sent
	// (upunsent.go).
	upCounted atomic.Pointer[countedConn]
	// waitingReleased says ReleaseWaiting has been called.
	waitingReleased atomic.Bool
}

// Interceptor serves intercepted sessions. It is safe for concurrent use.
type Interceptor struct {
	cfg    Config
	http1  *goproxy.ProxyHttpServer // for HTTP/1 clients
	http2  *goproxy.ProxyHttpServer // for HTTP/2 clients (h2 by ALPN, h2c)
	denied atomic.Uint64
	res    *resumption   // TLS sessions kept across connections: resume.go
	groups *originGroups // origins offered classical groups only: origingroups.go
	// verified holds the upstream chains that verified: verifycache.go.
	verified      *expiringSet[verifiedChain]
	verifications atomic.Uint64 // chains verified, not taken from verified or failed
	// failed holds the upstream chains that did not, with why: verifyguard.go.
	failed *expiringMap[failedChain, error]
	slots  *verifySlots // the verifications and leaf mints under way, each client's and all
	// proven holds the destinations that verified a certificate for a
	// name: bumpcheck.go.
	proven *expiringSet[provenOrigin]
}

// New returns an Interceptor.
func New(cfg Config) *Interceptor {
	if cfg.Records == nil {
		cfg.Records = records.NewWriter(nil)
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.DestinationCheckTimeout <= 0 {
		cfg.DestinationCheckTimeout = 5 * time.Second
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	return &Interceptor{cfg: cfg, http1: newGoproxy(false), http2: newGoproxy(true), res: newResumption(cfg.KeyLogWriter),
		groups: newOriginGroups(originSessionCacheSize), verified: newExpiringSet[verifiedChain](verifiedChainsSize),
		failed: newExpiringMap[failedChain, error](failedChainsSize), slots: newVerifySlots(),
		proven: newExpiringSet[provenOrigin](provenOriginsSize)}
}

// Denied returns how many connections and requests it denied.
func (ic *Interceptor) Denied() uint64 { return ic.denied.Load() }

// IsTrustHost reports whether host names the CA-trust page, which the
// appliance answers itself.
func (ic *Interceptor) IsTrustHost(host string) bool {
	return ic.cfg.Trust != nil && host != "" && strings.EqualFold(strings.TrimSuffix(host, "."), ic.cfg.TrustHost)
}

// CanBump reports whether TLS can be decrypted: the appliance has a CA.
func (ic *Interceptor) CanBump() bool { return ic.cfg.Minter != nil }

// Serve serves s until its client is done; it may return before that
// (goproxy serves on a goroutine of its own), and s.Done says when.
func (ic *Interceptor) Serve(s *Session) {
	if s.Done == nil {
		s.Done = func() {}
	}
	c := &session{Session: s, ic: ic, client: s.Client}
	if s.Hello != nil {
		s.Record.Kind, s.Record.SNI = "tls", s.Hello.ServerName
	}
	switch {
	case s.Hello != nil && !ic.CanBump():
		WriteAlert(c.client, AlertInternalError)
		c.refuse("TLS handed over for bumping, but there is no CA")
	case s.Hello != nil && ic.IsTrustHost(s.Hello.ServerName):
		c.releaseWaiting() // nothing to dial
		c.serveTrustTLS(s.Hello.ServerName)
	case s.Hello != nil:
		c.bump() // released once checked and dialled (dialBumped)
	default:
		c.releaseWaiting() // each request's dial is the transport's
		c.serveHTTP()
	}
}

// session is a Session being served.
type session struct {
	*Session
	ic     *Interceptor
	client net.Conn // the client as served: after the bump, its TLS side
	h2     bool     // the client speaks HTTP/2 (h2 by ALPN, or h2c)
	// upBytes counts what the connections to the destination carried
	// (all of a bumped connection's): its record's bytes.
	upBytes byteCount
	// upstreamCert is the bumped destination's certificate, when it was
	// verified: the names it covers need no destination check.
	upstreamCert *x509.Certificate
	// verdicts are the verification failures its rule accepted, of the
	// first upstream connection and of further ones: redial.go.
	verdicts verdicts
	// nameCheck is its own name decided after a reload: connreload.go.
	nameCheck nameRecheck
}

// finish writes the connection's record and ends the session; a tls record
// gets the destination's bytes (not the client's), TLS and all, however it ended.
func (s *session) finish() {
	s.writeRecord()
	s.Done()
}

// writeRecord completes the session's record and writes it.
func (s *session) writeRecord() {
	s.releaseWaiting() // if it ended before its dial
	s.markEnding()
	if s.Record.Kind == "tls" { // a refused bump's upstream handshake sent the SNI too
		s.Record.BytesOut, s.Record.BytesIn = s.upBytes.out.Load(), s.upBytes.in.Load()
		s.Record.BytesOutUnacked = min(s.upBytes.outUnacked.Load(), s.Record.BytesOut)
		s.noteRedialsInTLSRecord() // redial.go
	}
	s.noteReclaimed()
	s.noteShutdownEnd()
	s.noteClientBreak()
	s.noteAbort(s.Record)
	s.noteNameDenied() // connreload.go: after every other end, which says its own
	s.Record.End(s.Start)
	s.ic.write(s.Record)
}

// closeUpstream closes the first connection to the destination, if any.
func (s *Session) closeUpstream() {
	if s.Upstream != nil {
		s.Upstream.Close()
	}
}

// refuse ends a connection refused before any request: the client gets a
// RST, the record says why.
func (s *session) refuse(reason string) {
	Abort(s.client)
	s.closeUpstream()
	s.ic.denied.Add(1)
	s.Record.Action, s.Record.Result, s.Record.Error = "deny", "denied", reason
	s.finish()
}

// bump terminates the client's TLS with a leaf from our CA. The upstream
// handshake comes first: its certificate is verified before the client sees
// anything, and a failed verification is refused with an alert and
// recorded.
//
// The leaf names exactly what the client asked for and the upstream had to
// prove: the SNI, or without one the destination address the client
// dialled (verified against the certificate's IP SANs). Never the names of
// the upstream's certificate: a client dialling an address would otherwise
// get a leaf for whatever names a publicly trusted certificate there
// carries, an identity nobody proved at that address.
func (s *session) bump() {
	ic, hello, d := s.ic, s.Hello, s.Decision
	if !s.checkBumpDestination() { // bumpcheck.go: before the SNI leaves
		return
	}
	if !s.dialBumped() { // bumpcheck.go: after the check, when not dialled yet
		return
	}
	name := upstreamName(hello.ServerName, s.Subject.Dest.Addr())
	var verifyErr error
	// Whether a certificate came and was verified: a handshake that fails
	// before says nothing about one (bumpfail.go).
	verifyRan := false
	sessions := ic.res.originSessions(s.Subject.Dest) // resume.go: resumed sessions are verified again
	groupsKey := originGroupsKey(s.Subject.Dest, hello.ServerName)
	groups := ic.groups.offer(groupsKey) // origingroups.go
	ucfg := &tls.Config{
		ServerName:         hello.ServerName, // none for an address: SNI never carries one
		NextProtos:         httpALPN(hello.ALPN),
		MinVersion:         tls.VersionTLS12,
		CurvePreferences:   groups,
		InsecureSkipVerify: true, // verified below, so the reason can be recorded
		KeyLogWriter:       ic.cfg.KeyLogWriter,
		ClientSessionCache: sessions,
		VerifyConnection: func(cs tls.ConnectionState) error {
			verifyRan, verifyErr = true, ic.verifyUpstream(cs, name, s.Subject)
			sessions.verified.Store(verifyErr == nil)
			return noVerdict(verifyErr) // verifyguard.go: a wait that ran out ends here
		},
	}
	counted := &countedConn{Conn: s.Upstream, n: &s.upBytes}
	s.upCounted.Store(counted)
	up := tls.Client(counted, ucfg)
	hctx, cancel := context.WithTimeout(context.Background(), ic.cfg.HandshakeTimeout)
	err := up.HandshakeContext(hctx)
	cancel()
	if err != nil {
		// An origin that dropped the classical groups since it last chose
		// one: the next connection offers the hybrids again.
		ic.groups.forget(groupsKey)
		s.upstreamHandshakeFailed(err, groups != nil, verifyRan, verifyErr) // bumpfail.go
		return
	}
	cs := up.ConnectionState()
	s.Record.TLSVersion, s.Record.TLSCipher = tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite)
	if strings.Contains(s.Record.ALPN, records.CutMark) {
		// The client's offer, cut (proxy's alpnList), was all that marked
		// the record truncated before this handshake: the negotiated
		// protocol replaces it, and each request's record starts from
		// this one.
		s.Record.Truncated = false
	}
	s.Record.ALPN = cs.NegotiatedProtocol
	s.Record.UpstreamVerify = "ok"
	if verifyErr != nil {
		s.Record.UpstreamVerify = "failed"
		if !d.AllowUnverifiedUpstream {
			WriteAlert(s.client, AlertBadCertificate)
			s.refuse("upstream certificate: " + verifyErr.Error())
			return
		}
		s.Record.Error = unverifiedNote + verifyErr.Error()
		s.verdicts.firstErr = verifyErr // what each request over it records
	} else {
		// What the requests inside may lean on: the names this verified
		// certificate covers are proven to be served at the destination.
		// The next bump for the SNI needs no check before its handshake.
		s.upstreamCert = cs.PeerCertificates[0]
		if hello.ServerName != "" {
			ic.proven.add(newProvenOrigin(s.Subject.Dest, hello.ServerName), verifiedChainMemory, s.upstreamCert.NotAfter)
		}
		if groups == nil { // what it chose with the hybrids on offer
			ic.groups.learn(groupsKey, cs.CurveID)
		}
	}
	// Whether verified or accepted unverified by the rule, the leaf claims
	// no more than the name the client asked for.
	leaf, err := s.leaf(name) // mintslot.go: a mint takes a slot
	if err != nil {
		s.mintFailed(err)
		return
	}
	if !s.handshakeClient(name, leaf, cs.NegotiatedProtocol == "h2") {
		return
	}
	s.tapPlaintext()
	s.serveGoproxy("https", s.transport(up, s.redialer(ucfg, name, groupsKey))) // redial.go
}

// upstreamName is the name a bumped destination's certificate must be
// valid for, and the bumped client's leaf is minted for: the SNI, or,
// without one, the destination address, as the client that dialled it
// would check it (x509 matches an address against IP SANs).
func upstreamName(sni string, dest netip.Addr) string {
	if sni != "" {
		return sni
	}
	return dest.Unmap().WithZone("").String()
}

// handshakeClient completes the client's TLS handshake with leaf, minted
// for name; goproxy then gets the decrypted stream. Doing it here, not in
// goproxy, puts a failed handshake (a client that does not trust the CA)
// into the record, and keeps goproxy from adding ALPN protocols the client
// never offered (resumption.configForClient). A client may resume a session
// of an earlier connection for the same name (resume.go).
func (s *session) handshakeClient(name string, leaf *tls.Certificate, upstreamH2 bool) bool {
	c := tls.Server(s.client, s.ic.res.server)
	hctx, cancel := context.WithTimeout(context.Background(), s.ic.cfg.HandshakeTimeout)
	defer cancel()
	hctx = withClientHandshake(hctx, &clientHandshake{leaf: leaf, name: name, upstreamH2: upstreamH2})
	if err := c.HandshakeContext(hctx); err != nil {
		Abort(s.client)
		s.closeUpstream()
		s.Record.Result, s.Record.Error = "error", "client TLS handshake: "+err.Error()
		// The handshake's failure is the record's result, though an Abort
		// came first: a client that rejects the leaf sends its alert and
		// resets, and the client watch's "reset" would hide the cause.
		// But a handshake that met the client's reset, or only saw its
		// client go (no alert) while the watch saw a reset, ended with the
		// client's reset: recorded so (handshakeReset).
		a := s.aborted.Swap(ending)
		if a != nil && a != ending {
			s.Record.Error += "; " + a.err.Error()
		}
		if handshakeReset(err, a) {
			s.Record.Result = "reset"
		}
		s.finish()
		return false
	}
	s.client = c
	s.h2 = c.ConnectionState().NegotiatedProtocol == "h2"
	return true
}

// trustRule is the rule recorded for what the trust page answers.
const trustRule = policy.TrustPageRule

// serveTrustTLS answers the trust host over TLS itself, with a leaf for the
// name: no destination can prove it is gwlbproxy.internal, so none is asked.
// The leaf is the configured trust host's, not minted in a slot
// (mintslot.go says why).
func (s *session) serveTrustTLS(name string) {
	s.closeUpstream()
	s.Record.Rule, s.Record.Action, s.Record.Policy = trustRule, policy.Allow.String(), "" // no policy's rule
	leaf, err := s.ic.cfg.Minter.Leaf(s.ic.cfg.TrustHost)
	if err != nil {
		s.mintFailed(err)
		return
	}
	if !s.handshakeClient(name, leaf, false) {
		return
	}
	nowhere := func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("the trust host is answered by the appliance; it dials nothing")
	}
	s.serveGoproxy("https", unrecheckedTransport{&http.Transport{DialContext: nowhere, DialTLSContext: nowhere}})
}

// httpALPN keeps the client's offer of the protocols the HTTP proxy speaks,
// in the client's order.
func httpALPN(offer []string) []string {
	var out []string
	for _, p := range offer {
		if p == "h2" || p == "http/1.1" {
			out = append(out, p)
		}
	}
	return out
}

// verifyUpstream checks the upstream chain against the system roots and the
// configured extra roots, and that its leaf is valid for name: a DNS name
// (the SNI), or an address literal, which x509 matches against IP SANs
// only. name is never empty: a chain valid for no name in particular
// proves nothing about the destination. The chain is the origin's to
// choose, so what it may cost is bounded first (verifyguard.go), by
// subj's destination and client.
func (ic *Interceptor) verifyUpstream(cs tls.ConnectionState, name string, subj policy.Subject) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	if err := checkPresented(cs.PeerCertificates, cs.DidResume); err != nil {
		return err
	}
	key := newVerifiedChain(cs.PeerCertificates, name) // verifycache.go
	if ic.verified.has(key) {
		return nil
	}
	fkey := failedChain{dest: subj.Dest, verifiedChain: key}
	if err, ok := ic.failed.get(fkey); ok {
		return err
	}
	release, err := ic.slots.acquire(newClientKey(subj.Endpoint, subj.Client), verifyWait(ic.cfg.HandshakeTimeout))
	if err != nil {
		return fmt.Errorf("%w: not verified", err)
	}
	defer release()
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	ic.verifications.Add(1)
	chains, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots: ic.cfg.UpstreamRoots, Intermediates: inter, DNSName: name, CurrentTime: ic.verified.now(),
	})
	if err == nil {
		err = checkKeys(chains) // verifyguard.go
	}
	if err != nil {
		err = failureText(err) // verifyguard.go: no certificate kept
		ic.failed.put(fkey, err, failedChainMemory, time.Time{})
		return err
	}
	ic.verified.add(key, verifiedChainMemory, chainsExpiry(chains))
	return nil
}
