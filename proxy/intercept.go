package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// flow is one accepted TCP connection on its way through classification,
// policy and the relay or the HTTP proxy.
type flow struct {
	p      *Proxy
	rec    *Record // the connection's record
	start  time.Time
	pol    *policy.Policy
	pf     policy.Flow
	client net.Conn // the client, with the sniffed bytes still to read
	up     net.Conn // the dialled destination
	h2     bool     // the client speaks HTTP/2 (h2 by ALPN, or h2c)

	// detached: the flow outlives HandleTCP's goroutine (goproxy serves
	// it), and ends, active count included, in endMITM.
	detached bool
	// upstreams are the connections the flow's HTTP transport dialled
	// besides up: all closed when the flow ends, pooled or not.
	upstreams connSet
}

// connSet holds open connections until they close, or until closeAll.
type connSet struct {
	mu     sync.Mutex
	conns  map[*setConn]struct{}
	closed bool
}

type setConn struct {
	net.Conn
	set *connSet
}

// add tracks c, or closes it if the set is closed already.
func (s *connSet) add(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, errors.New("the client connection has ended")
	}
	if s.conns == nil {
		s.conns = make(map[*setConn]struct{})
	}
	sc := &setConn{Conn: c, set: s}
	s.conns[sc] = struct{}{}
	return sc, nil
}

func (c *setConn) Close() error {
	c.set.mu.Lock()
	delete(c.set.conns, c)
	c.set.mu.Unlock()
	return c.Conn.Close()
}

// closeAll closes every connection, and any added later.
func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// serve classifies the connection by its first bytes and serves it.
func (f *flow) serve(accepted net.Conn) {
	br := sniffReaders.Get().(*bufio.Reader)
	br.Reset(accepted)
	deadline, stop := watchServerFirst(accepted, f.up)
	// No time limit: a client that waits and then sends a ClientHello must
	// still meet the domain rules. A destination that speaks first ends the
	// wait (the protocol is then server-first, and relayed as TCP).
	res, err := sniff.Sniff(br, deadline, 0)
	if early, upErr := stop(); len(early) > 0 || upErr != nil {
		f.up = &prefixConn{Conn: f.up, prefix: early, err: upErr}
	}
	f.client = &peekedConn{Conn: accepted, r: br}
	if err != nil { // the client reset or broke the connection while we waited
		f.client.Close()
		f.up.Close()
		f.rec.Result, f.rec.Error = "reset", err.Error()
		f.p.finish(f.rec, f.start)
		return
	}
	switch res.Kind {
	case sniff.KindTLS:
		if res.Err != nil {
			// A hello we cannot read has no name for the domain rules to
			// see: deciding it on addresses would let it past them.
			f.rec.Kind, f.rec.Rule = "tls", ""
			writeAlert(f.client, alertHandshakeFailure)
			f.refuse("ClientHello could not be read: " + res.Err.Error())
			return
		}
		f.serveTLS(&res.Hello)
	case sniff.KindHTTP:
		f.serveHTTP(res.HTTP.Hostname(), &res.HTTP)
	case sniff.KindHTTP2Cleartext:
		f.h2 = true
		f.serveHTTP("", nil)
	default:
		f.serveTCP()
	}
}

// decide runs the policy for the flow as classified so far.
func (f *flow) decide(protocol, domain string) policy.Decision {
	f.pf.Protocol, f.pf.Domain = protocol, domain
	d := f.pol.Decide(f.pf)
	f.rec.Rule, f.rec.Action = d.Rule, d.Action.String()
	return d
}

// refuse ends a denied connection: the client gets a RST.
func (f *flow) refuse(reason string) {
	abort(f.client)
	f.up.Close()
	f.p.deny(f.rec, f.start, reason)
}

func (f *flow) relay() {
	var err error
	f.rec.BytesOut, f.rec.BytesIn, err = Relay(f.client, f.up)
	if err != nil {
		f.rec.Result, f.rec.Error = "reset", err.Error()
	}
	f.p.finish(f.rec, f.start)
}

func (f *flow) serveTCP() {
	if d := f.decide(policy.ProtoTCP, ""); d.Action == policy.Deny {
		f.refuse("denied by policy")
		return
	}
	f.relay()
}

func (f *flow) serveTLS(hello *sniff.ClientHello) {
	f.rec.Kind, f.rec.SNI, f.rec.ALPN = "tls", hello.ServerName, strings.Join(hello.ALPN, ",")
	if f.p.isTrustHost(hello.ServerName) && f.p.cfg.Minter != nil {
		f.serveTrustTLS(hello.ServerName)
		return
	}
	d := f.decide(policy.ProtoTLS, hello.ServerName)
	switch {
	case d.Action == policy.Deny:
		writeAlert(f.client, alertAccessDenied)
		f.refuse("denied by policy")
	case d.Action == policy.Bump && f.p.cfg.Minter != nil:
		f.bump(hello, d)
	default:
		if d.Action == policy.Bump { // no CA: nothing can be decrypted
			f.rec.Action, f.rec.Error = policy.Splice.String(), "bump requested but the appliance has no CA"
		}
		f.relay()
	}
}

// TLS alerts sent to clients whose connection is refused.
const (
	alertHandshakeFailure = 40
	alertBadCertificate   = 42
	alertAccessDenied     = 49
	alertInternalError    = 80
)

// writeAlert sends a fatal TLS alert record; it is what a client that has
// sent its ClientHello understands as a refusal.
func writeAlert(c net.Conn, desc byte) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write([]byte{21, 3, 3, 0, 2, 2, desc})
}

// bump terminates the client's TLS with a leaf from our CA. The upstream
// handshake comes first: its certificate is verified before the client sees
// anything, a client without SNI gets a leaf with the upstream's names, and
// a failed verification is refused with an alert and recorded.
func (f *flow) bump(hello *sniff.ClientHello, d policy.Decision) {
	p := f.p
	var verifyErr error
	ucfg := &tls.Config{
		ServerName:         hello.ServerName,
		NextProtos:         httpALPN(hello.ALPN),
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, so the reason can be recorded
		VerifyConnection: func(cs tls.ConnectionState) error {
			verifyErr = p.verifyUpstream(cs, hello.ServerName)
			return nil
		},
	}
	up := tls.Client(f.up, ucfg)
	hctx, cancel := context.WithTimeout(context.Background(), p.cfg.DialTimeout)
	err := up.HandshakeContext(hctx)
	cancel()
	if err != nil {
		writeAlert(f.client, alertHandshakeFailure)
		f.rec.UpstreamVerify = "failed"
		f.refuse("upstream TLS handshake: " + err.Error())
		return
	}
	cs := up.ConnectionState()
	f.rec.TLSVersion, f.rec.TLSCipher = tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite)
	f.rec.ALPN = cs.NegotiatedProtocol
	f.rec.UpstreamVerify = "ok"
	if verifyErr != nil {
		f.rec.UpstreamVerify = "failed"
		if !d.AllowUnverifiedUpstream {
			writeAlert(f.client, alertBadCertificate)
			f.refuse("upstream certificate: " + verifyErr.Error())
			return
		}
		f.rec.Error = "upstream certificate accepted by rule: " + verifyErr.Error()
	}
	var leaf *tls.Certificate
	if hello.ServerName != "" {
		leaf, err = p.cfg.Minter.Leaf(hello.ServerName)
	} else {
		up := cs.PeerCertificates[0]
		// crypto/tls may share parsed certificates between connections:
		// build a new slice rather than append to theirs.
		ips := slices.Concat(up.IPAddresses, []net.IP{f.pf.Dest.Addr().AsSlice()})
		leaf, err = p.cfg.Minter.LeafFor(up.DNSNames, ips)
	}
	if err != nil {
		writeAlert(f.client, alertInternalError)
		f.refuse("minting a leaf: " + err.Error())
		return
	}
	redial := ucfg.Clone()
	redial.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := p.verifyUpstream(cs, hello.ServerName); err != nil && !d.AllowUnverifiedUpstream {
			return err
		}
		return nil
	}
	if !f.handshakeClient(leaf, cs.NegotiatedProtocol == "h2") {
		up.Close()
		return
	}
	f.mitm("https", f.transport(up, redial))
}

// handshakeClient completes the client's TLS handshake with leaf; goproxy
// then gets the decrypted stream. Doing it here, not in goproxy, puts a
// failed handshake (a client that does not trust the CA) into the record,
// and keeps goproxy from adding ALPN protocols the client never offered.
func (f *flow) handshakeClient(leaf *tls.Certificate, upstreamH2 bool) bool {
	c := tls.Server(f.client, clientTLSConfig(leaf, upstreamH2))
	hctx, cancel := context.WithTimeout(context.Background(), f.p.cfg.DialTimeout)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		abort(f.client)
		f.rec.Result, f.rec.Error = "error", "client TLS handshake: "+err.Error()
		f.p.finish(f.rec, f.start)
		return false
	}
	f.client = c
	f.h2 = c.ConnectionState().NegotiatedProtocol == "h2"
	return true
}

// clientTLSConfig presents leaf to the client and takes, of the client's
// own ALPN offer, what both sides can carry: h2 when the upstream speaks it,
// and http/1.1. A client offering neither negotiates no ALPN (a fixed list
// with no overlap would make the handshake fail) and speaks HTTP/1.x.
func clientTLSConfig(leaf *tls.Certificate, upstreamH2 bool) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			var protos []string
			for _, p := range hello.SupportedProtos {
				if p == "http/1.1" || (p == "h2" && upstreamH2) {
					protos = append(protos, p)
				}
			}
			return &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: protos, MinVersion: tls.VersionTLS12}, nil
		},
	}
}

// serveTrustTLS answers the trust host over TLS itself, with a leaf for the
// name: no destination can prove it is gwlbproxy.internal, so none is asked.
func (f *flow) serveTrustTLS(name string) {
	f.up.Close()
	f.rec.Rule, f.rec.Action = trustRule, policy.Allow.String()
	leaf, err := f.p.cfg.Minter.Leaf(name)
	if err != nil {
		writeAlert(f.client, alertInternalError)
		f.refuse("minting a leaf: " + err.Error())
		return
	}
	if !f.handshakeClient(leaf, false) {
		return
	}
	nowhere := func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("the trust host is answered by the appliance; it dials nothing")
	}
	f.mitm("https", &http.Transport{DialContext: nowhere, DialTLSContext: nowhere})
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
// configured extra roots, and its name against the SNI. Without SNI there is
// no name the client asked for, so only the chain is checked.
func (p *Proxy) verifyUpstream(cs tls.ConnectionState, name string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots: p.cfg.UpstreamRoots, Intermediates: inter, DNSName: name,
	})
	return err
}

func (f *flow) serveHTTP(host string, req *sniff.HTTPRequest) {
	f.rec.Kind = "http"
	if req != nil {
		f.rec.Method, f.rec.Host, f.rec.Scheme = req.Method, req.Host, "http"
		if u, err := url.Parse(req.Target); err == nil {
			f.rec.Path = u.Path
		}
	}
	if !f.p.isTrustHost(host) {
		if d := f.decide(policy.ProtoHTTP, host); d.Action == policy.Deny {
			writeDenyResponse(f.client, d.Rule, host)
			f.client.Close()
			f.up.Close()
			f.rec.Status = http.StatusForbidden
			f.p.deny(f.rec, f.start, "denied by policy")
			return
		}
	}
	f.mitm("http", f.transport(f.up, nil))
}

const trustRule = "trust-page"

func (p *Proxy) isTrustHost(host string) bool {
	return p.cfg.Trust != nil && host != "" && strings.EqualFold(strings.TrimSuffix(host, "."), p.cfg.TrustHost)
}

// transport returns the HTTP client side of one intercepted connection. Every
// connection it makes goes to the flow's original destination, whatever the
// request's Host says: a client must not steer the appliance elsewhere. The
// first one is the connection already dialled (and, for TLS, verified).
func (f *flow) transport(first net.Conn, tlsCfg *tls.Config) *http.Transport {
	var used atomic.Bool // whether a connection took up over
	dest := f.pf.Dest.String()
	dial := func(ctx context.Context) (net.Conn, error) {
		if !used.Swap(true) {
			return first, nil
		}
		c, err := f.p.dialer.DialContext(ctx, "tcp", dest)
		if err != nil {
			return nil, err
		}
		return f.upstreams.add(c)
	}
	tr := &http.Transport{
		Proxy:               nil,
		ForceAttemptHTTP2:   true,
		DisableCompression:  true, // pass Content-Encoding through untouched
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
	}
	if tlsCfg != nil {
		tr.DialTLSContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := dial(ctx)
			if err != nil || c == first {
				return c, err
			}
			tc := tls.Client(c, tlsCfg.Clone())
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, err
			}
			return tc, nil
		}
	}
	return tr
}

// mitmConn is what goproxy needs to serve one intercepted connection: the
// round trips to upstream. goproxy always sees cleartext: TLS to the client
// is ours (handshakeClient).
type mitmConn struct {
	f      *flow
	scheme string // of the client's requests: https when bumped
	tr     *http.Transport
	cc     *hijackedConn
	base   Record // what each request's record starts from: f.rec changes as the flow ends

	// The flow ends once goproxy has closed the connection and no request
	// is in flight: an HTTP/2 server closes it without waiting for the
	// handlers of its streams, which still dial, relay and record.
	inflight atomic.Int64
	closed   atomic.Bool
	ended    sync.Once
}

// connClosed and requestDone each end the flow if the other condition
// holds already; between them (sequentially consistent atomics) one sees
// both.
func (m *mitmConn) connClosed() {
	m.closed.Store(true)
	if m.inflight.Load() == 0 {
		m.end()
	}
}

func (m *mitmConn) requestDone() {
	if m.inflight.Add(-1) == 0 && m.closed.Load() {
		m.end()
	}
}

func (m *mitmConn) end() { m.ended.Do(func() { m.f.endMITM(m.scheme, m.tr, m.cc) }) }

type mitmKey struct{}

// mitm feeds the (cleartext) client connection to goproxy as if it had
// arrived through a CONNECT. goproxy serves it on a goroutine of its own
// and closes it when done: the flow ends then, in the connection's Close.
// Returning at once spares each intercepted connection a goroutine (and its
// stack, about 9 KiB) that would only wait for that.
func (f *flow) mitm(scheme string, tr *http.Transport) {
	m := &mitmConn{f: f, scheme: scheme, tr: tr}
	host := f.pf.Dest.String()
	if f.rec.SNI != "" {
		host = net.JoinHostPort(f.rec.SNI, strconv.Itoa(int(f.pf.Dest.Port())))
	}
	cc := &hijackedConn{Conn: f.client, swallow: []byte("HTTP/1.1 200 OK\r\n\r\n")}
	cc.limit.arm(f.p.cfg.MaxHeaderBytes, f.h2)
	cc.onClose = m.connClosed
	f.detached = true // endMITM ends the flow
	m.cc = cc
	m.base = *f.rec
	creq := (&http.Request{
		Method: http.MethodConnect, URL: &url.URL{Host: host}, Host: host,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: make(http.Header),
		RemoteAddr: netip.AddrPortFrom(f.pf.Client, f.rec.ClientPort).String(),
	}).WithContext(context.WithValue(context.Background(), mitmKey{}, m))
	gp := f.p.gp
	if f.h2 {
		gp = f.p.gpH2
	}
	gp.ServeHTTP(&hijacker{conn: cc}, creq)
}

// endMITM ends an intercepted flow once goproxy has closed its connection
// and its last request is done.
func (f *flow) endMITM(scheme string, tr *http.Transport, cc *hijackedConn) {
	defer f.p.stats.tcpActive.Add(-1)
	// The client is gone: no upstream connection has a use any more, idle
	// or not (a request that came after the end may be holding one).
	tr.CloseIdleConnections()
	f.upstreams.closeAll()
	// The first, whether a request took it up or not (a preconnect, a
	// denied request).
	f.up.Close()
	if cc.limit.tooLarge.Load() { // a record for the request that never was
		rec := *f.rec
		rec.Kind, rec.Scheme, rec.Status, rec.BytesIn, rec.BytesOut = "http", scheme, http.StatusRequestHeaderFieldsTooLarge, 0, 0
		rec.Rule, rec.Method, rec.Path, rec.UserAgent = "", "", "", ""
		f.p.deny(&rec, f.start, fmt.Sprintf("request head larger than %d bytes", f.p.cfg.MaxHeaderBytes))
	}
	if f.rec.Kind == "tls" { // bumped: the connection's record, besides one per request
		f.rec.BytesOut, f.rec.BytesIn = cc.in.Load(), cc.out.Load()
		f.p.finish(f.rec, f.start)
	}
}

// newGoproxy returns the HTTP proxy behind intercepted connections. With
// h2, goproxy looks for the HTTP/2 preface first: it waits for 24 bytes, so
// an HTTP/1 client whose whole request is shorter ("GET / HTTP/1.0" and an
// empty line) would wait forever. The sniffer and the ALPN result already
// say which protocol a client speaks, so each gets a proxy of its own.
func newGoproxy(h2 bool) *goproxy.ProxyHttpServer {
	gp := goproxy.NewProxyHttpServer()
	gp.Tr = &http.Transport{Proxy: nil} // unused: every connection has its own RoundTripper
	gp.KeepAcceptEncoding = true        // else responses are silently decompressed
	gp.AllowHTTP2 = h2
	gp.Logger = debugLogger{}
	// goproxy formats a line per request when verbose: only when debugging.
	gp.Verbose = slog.Default().Enabled(context.Background(), slog.LevelDebug)
	gp.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
		m, _ := ctx.Req.Context().Value(mitmKey{}).(*mitmConn)
		if m == nil { // not one of ours: nothing else reaches this proxy
			return goproxy.RejectConnect, host
		}
		ctx.RoundTripper = m
		return &goproxy.ConnectAction{Action: goproxy.ConnectMitm}, host
	})
	return gp
}

type debugLogger struct{}

func (debugLogger) Printf(f string, a ...any) { slog.Debug("goproxy: " + fmt.Sprintf(f, a...)) }

// RoundTrip implements goproxy.RoundTripper: one HTTP request of an
// intercepted connection. Every request is decided on its own Host (a
// keep-alive connection, or a bumped one, may carry requests for other
// names than its first) and gets its own record.
func (m *mitmConn) RoundTrip(req *http.Request, _ *goproxy.ProxyCtx) (*http.Response, error) {
	m.cc.limit.headDone()
	if !m.f.h2 {
		// The previous response is complete, whether or not its end was
		// seen: what it left held goes now, before a "100 Continue".
		m.cc.holdResponse(false)
	}
	reqBody := req.Body // goproxy's own, before roundTrip wraps it
	m.inflight.Add(1)
	resp, err := m.roundTrip(req)
	if !recordsOnClose(resp) {
		m.requestDone() // its record is written already
	}
	if resp != nil && resp.Body != nil && resp.StatusCode != http.StatusSwitchingProtocols { // a 101 is a tunnel now
		resp.Body = &nextHead{ReadCloser: resp.Body, cc: m.cc, reqBody: reqBody}
		if !m.f.h2 && hasBody(req, resp) {
			m.cc.holdResponse(true)
		}
	}
	return resp, err
}

// recordsOnClose reports whether resp's record is written when goproxy
// closes its body.
func recordsOnClose(resp *http.Response) bool {
	if resp == nil {
		return false
	}
	switch resp.Body.(type) {
	case *recordingBody, *recordingRWBody:
		return true
	}
	return false
}

// hasBody reports whether goproxy writes body bytes after resp's head. An
// empty body has a ContentLength of 0 (the transport's http.NoBody too).
func hasBody(req *http.Request, resp *http.Response) bool {
	return req.Method != http.MethodHead && resp.ContentLength != 0 &&
		resp.StatusCode >= 200 && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified
}

func (m *mitmConn) roundTrip(req *http.Request) (*http.Response, error) {
	f, p := m.f, m.f.p
	start := time.Now()
	req.URL.Scheme = m.scheme // goproxy saw cleartext and says http
	rec := m.base
	rec.Kind, rec.Scheme, rec.Method, rec.Host = "http", m.scheme, req.Method, req.Host
	rec.Path, rec.UserAgent, rec.Error, rec.Result = req.URL.Path, req.UserAgent(), "", "ok"
	rec.BytesOut, rec.BytesIn = 0, 0
	host := req.URL.Hostname()
	if h, _, err := net.SplitHostPort(req.Host); err == nil {
		host = h
	} else if req.Host != "" {
		host = req.Host
	}
	if p.isTrustHost(host) {
		rw := httptest.NewRecorder()
		p.cfg.Trust.ServeHTTP(rw, req)
		resp := rw.Result()
		rec.Action, rec.Rule, rec.Status, rec.BytesIn = "allow", trustRule, resp.StatusCode, int64(rw.Body.Len())
		p.finish(&rec, start)
		return resp, nil
	}
	proto := policy.ProtoHTTP
	if m.scheme == "https" {
		proto = policy.ProtoTLS
	}
	pf := f.pf
	pf.Protocol, pf.Domain = proto, host
	d := f.pol.Decide(pf) // the connection's policy: a reload leaves open flows as they were
	rec.Rule, rec.Action = d.Rule, d.Action.String()
	if m.scheme == "https" && d.Action != policy.Deny {
		rec.Action = "bump" // the connection is decrypted already
	}
	if d.Action == policy.Deny {
		rec.Status = http.StatusForbidden
		p.deny(&rec, start, "denied by policy")
		return denyResponse(req, d.Rule, host), nil
	}
	var sent countingReader
	if req.Body != nil && req.Body != http.NoBody {
		sent.r = req.Body
		req.Body = &sent
	}
	resp, err := m.tr.RoundTrip(req)
	if err != nil {
		rec.Status = http.StatusBadGateway
		rec.Result, rec.Error = dialResult(err), err.Error()
		p.finish(&rec, start)
		return errorResponse(req, http.StatusBadGateway, "gwlbproxy could not reach the destination: "+err.Error()), nil
	}
	rec.Status = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// goproxy tunnels a WebSocket upgrade only; any other 101 it would
		// answer as a plain response and go on reading requests from what
		// is now another protocol's stream.
		if !isWebSocketUpgrade(resp.Header) {
			resp.Body.Close()
			rec.Status, rec.Result, rec.Error = http.StatusBadGateway, "error", "upgrade to "+resp.Header.Get("Upgrade")+" is not supported"
			p.finish(&rec, start)
			return errorResponse(req, http.StatusBadGateway, "gwlbproxy relays WebSocket upgrades only"), nil
		}
		rec.WebSocket = true
	}
	rb := &recordingBody{ReadCloser: resp.Body}
	rb.done = func() {
		rec.BytesOut, rec.BytesIn = sent.n.Load()+rb.written.Load(), rb.read.Load()
		p.finish(&rec, start)
		m.requestDone()
	}
	if w, ok := resp.Body.(io.Writer); ok { // a 101's body carries both directions
		resp.Body = &recordingRWBody{recordingBody: rb, w: w}
	} else {
		resp.Body = rb
	}
	return resp, nil
}

// isWebSocketUpgrade is goproxy's own test for a response it tunnels.
func isWebSocketUpgrade(h http.Header) bool {
	return headerHasToken(h, "Connection", "upgrade") && headerHasToken(h, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func denyResponse(req *http.Request, rule, host string) *http.Response {
	page := fmt.Sprintf("<!doctype html><title>403 Forbidden</title><h1>Forbidden</h1>"+
		"<p>gwlbproxy denied this request to <b>%s</b> (rule <code>%s</code>).</p>\n",
		html.EscapeString(host), html.EscapeString(rule))
	resp := errorResponse(req, http.StatusForbidden, "")
	resp.Header.Set("Content-Type", "text/html; charset=utf-8")
	resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader(page)), int64(len(page))
	return resp
}

func errorResponse(req *http.Request, code int, msg string) *http.Response {
	body := msg + "\n"
	return &http.Response{
		StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: req,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
	}
}

// writeDenyResponse answers a denied plain-HTTP connection before any
// request is proxied.
func writeDenyResponse(c net.Conn, rule, host string) {
	resp := denyResponse(&http.Request{Method: http.MethodGet}, rule, host)
	resp.Close = true
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = resp.Write(c)
}

type countingReader struct {
	r io.ReadCloser
	n atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// recordingBody counts a response body and writes the request's record when
// goproxy closes it, i.e. once the response has reached the client.
type recordingBody struct {
	io.ReadCloser
	read, written atomic.Int64
	once          sync.Once
	done          func()
}

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func (b *recordingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

type recordingRWBody struct {
	*recordingBody
	w io.Writer
}

func (b *recordingRWBody) Write(p []byte) (int, error) {
	n, err := b.w.Write(p)
	b.written.Add(int64(n))
	return n, err
}

// peekedConn reads through the buffer that holds the sniffed bytes.
type peekedConn struct {
	net.Conn
	r *bufio.Reader // nil once the sniffed bytes have been read
}

// sniffReaders recycles the readers connections are classified through.
// A reader holds a whole TLS record (16 KiB): a connection needs it only
// until the bytes it peeked have been read, not for as long as it lasts.
var sniffReaders = sync.Pool{New: func() any { return sniff.NewReader(nil) }}

// Read reads the sniffed bytes, then the connection itself. Reads never
// overlap (the relay, or goproxy's reader, is the only reader), so the
// reader can go back to the pool once empty.
func (c *peekedConn) Read(b []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(b) // only what is buffered: no read of the connection
		}
		c.r.Reset(nil)
		sniffReaders.Put(c.r)
		c.r = nil
	}
	return c.Conn.Read(b)
}

// CloseWrite passes a half-close on to the client connection.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// abort closes c with a RST: a client connection of the stack through its
// Abort, a host socket by closing with a zero linger.
func abort(c net.Conn) {
	switch w := c.(type) {
	case *peekedConn:
		c = w.Conn
	case *prefixConn:
		c = w.Conn
	}
	switch c := c.(type) {
	case interface{ Abort() }:
		c.Abort()
		return
	case *net.TCPConn:
		_ = c.SetLinger(0)
	}
	c.Close()
}

// hijackedConn is the client connection as goproxy sees it. It swallows the
// CONNECT response goproxy writes (our client never sent a CONNECT), counts
// bytes, bounds HTTP/1 request heads, and reports when goproxy closes it.
type hijackedConn struct {
	net.Conn
	swallow []byte
	in, out atomic.Int64
	once    sync.Once
	onClose func() // run once, after the first Close

	limit headLimit // see headlimit.go
	hold  writeHold // see writehold.go
}

// hijacker is the http.ResponseWriter goproxy gets for our CONNECT: it can
// only be hijacked. The sniffed bytes stay in the connection's own reader:
// goproxy replays a snapshot of whatever the hijacked reader has buffered,
// so handing it that reader would deliver them twice.
type hijacker struct {
	conn *hijackedConn
	hdr  http.Header
}

func (h *hijacker) Header() http.Header {
	if h.hdr == nil {
		h.hdr = make(http.Header)
	}
	return h.hdr
}

func (h *hijacker) Write(b []byte) (int, error) { return h.conn.Write(b) }

func (h *hijacker) WriteHeader(int) {}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	// goproxy only snapshots what the reader has buffered (nothing: it has
	// never read) and never writes through the writer: the smallest
	// buffers bufio allows spare 8 KiB of garbage per connection.
	return h.conn, bufio.NewReadWriter(bufio.NewReaderSize(h.conn, 16), bufio.NewWriterSize(h.conn, 16)), nil
}
