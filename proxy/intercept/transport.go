package intercept

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"
)

// byteCount is what a session's connections to the destination carried,
// both ways: for a bumped connection's record, which says what reached the
// destination, not what the client sent (a request denied inside it sends
// nothing on).
type byteCount struct {
	out, in atomic.Int64
	// outUnacked is how many of out the destination had not acknowledged
	// when the appliance let go of a connection (upunsent.go).
	outUnacked atomic.Int64
}

// countedConn counts what is read from and written to a connection to the
// destination, below TLS: the bytes on the wire, as the record of a
// spliced connection counts them.
type countedConn struct {
	net.Conn
	n *byteCount
	// onRead, when set, is called (and cleared) by the next read that
	// returns bytes: headDeadline's, for the first byte of a response
	// head after a 1xx, which http.Transport does not report.
	onRead atomic.Pointer[func()]
	// slot, when set, is released once the connection closes (holdSlot):
	// an HTTP/2 upstream connection's, which net/http must have as the
	// *tls.Conn itself, so no framingConn can hold it.
	slot   atomic.Pointer[connSlot]
	closed atomic.Bool
	// onClose, when set, is called once the connection closes
	// (whenClosed): the first connection's take-up's (h2first.go).
	onClose atomic.Pointer[func()]
	// credit: the request it was dialled for (dialcredit.go).
	credit dialCredit
	// unsentDropped says what the socket never sent is off the count
	// (upunsent.go).
	unsentDropped atomic.Bool
}

// whenClosed has f called once c closes, or at once if it has.
func (c *countedConn) whenClosed(f func()) {
	c.onClose.Store(&f)
	if c.closed.Load() { // Close may not have seen f
		c.closeOnce()
	}
}

// closeOnce calls onClose's function, if any, once.
func (c *countedConn) closeOnce() {
	if f := c.onClose.Swap(nil); f != nil {
		(*f)()
	}
}

// holdSlot makes c release sl once it closes, or at once if it has.
func (c *countedConn) holdSlot(sl *connSlot) {
	c.slot.Store(sl)
	if c.closed.Load() { // Close may not have seen sl
		sl.release()
	}
}

// Close closes the connection, then releases its slot if it holds one:
// the next dial's connection comes only once this one is closed.
func (c *countedConn) Close() error {
	c.closed.Store(true)
	c.dropUnsent(false)
	err := c.Conn.Close()
	c.slot.Load().release() // nil-safe, once
	c.creditOnClose()       // dialcredit.go
	c.closeOnce()
	return err
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.in.Add(int64(n))
	c.noteRead()
	if n > 0 && c.onRead.Load() != nil {
		if f := c.onRead.Swap(nil); f != nil {
			(*f)()
		}
	}
	return n, err
}

// countedUnder returns the countedConn under c, through TLS and connSet's
// wrapper, or nil.
func countedUnder(c net.Conn) *countedConn {
	cc, _ := unwrapConn(c, isCounted).(*countedConn)
	return cc
}

func isCounted(c net.Conn) bool { _, ok := c.(*countedConn); return ok }

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.out.Add(int64(n))
	return n, err
}

// Abort resets the connection.
func (c *countedConn) Abort() {
	c.dropUnsent(true)
	Abort(c.Conn)
}

// The windows the upstream HTTP/2 transport grants a destination. It takes
// what a stream's window allows into memory whether or not the client
// reads it, and a client can stop reading while reading the connection
// (granting no stream window: no write of the appliance's ever waits, so
// the write-stall bound never sees it). x/net's defaults, 4 MiB a stream
// and 1 GiB a connection, let one client flow of 250 streams pin a
// gigabyte. 2 MiB a connection still carries 40 MB/s over a 50 ms round
// trip, and a client flow has at most maxUpstreamConns of them.
const (
	upstreamH2ReceivePerConnection = 2 << 20
	upstreamH2ReceivePerStream     = 1 << 20
)

// The health check of an upstream HTTP/2 connection: a PING after
// upstreamH2PingAfter with no frame read, and the connection closed when
// its ack has not come upstreamH2PingTimeout later. net/http counts a
// stream it reset against its connection until the origin acks a PING;
// one that never does (its own, or one gone silent) would keep a
// connection full of such streams, and its slot among maxUpstreamConns,
// until the session ends. Closed, its slot goes to the next dial.
var (
	upstreamH2PingAfter   = newDuration(15 * time.Second) // set by tests while sessions read them
	upstreamH2PingTimeout = newDuration(10 * time.Second)
)

// transport returns the HTTP client side of one intercepted connection. Every
// connection it makes goes to the session's original destination, whatever the
// request's Host says: a client must not steer the appliance elsewhere. The
// first one is the connection already dialled (and, for TLS, verified), if
// any; redial, when set, completes each further one's TLS handshake
// (session.redialer), offering http/1.1 alone for h1Only.
//
// A client speaking HTTP/1 to an upstream speaking HTTP/1 gets an
// h1Transport (h1client.go): no goroutines or buffers while idle. Else an
// http.Transport, which multiplexes an HTTP/2 client's concurrent streams
// over several upstream connections, or one HTTP/2 upstream connection.
func (s *session) transport(first net.Conn, redial func(ctx context.Context, c net.Conn, h1Only bool) (net.Conn, error)) upstreamTransport {
	var used atomic.Bool // whether a connection took up over
	dest := s.Subject.Dest.String()
	pace := s.dialPace() // h2guard.go
	dial := func(ctx context.Context) (net.Conn, error) {
		hd, err := newConnFor(ctx)
		if err != nil {
			return nil, err
		}
		// After dialledFor, if made: the count passes from one to the other.
		defer hd.dialEnded()
		if first != nil && !used.Swap(true) {
			dialledFor(ctx, first) // dialcredit.go
			return first, nil
		}
		if err := pace.wait(ctx); err != nil {
			return nil, err
		}
		if err := s.dialDenied(); err != nil { // connreload.go
			return nil, err
		}
		c, err := s.ic.cfg.Dial(ctx, dest)
		if err != nil {
			return nil, err
		}
		var unwatch func()
		if s.WatchUpstream != nil {
			unwatch = s.WatchUpstream(c)
		}
		cc := &countedConn{Conn: c, n: &s.upBytes}
		dialledFor(ctx, cc)
		return s.upstreams.add(cc, unwatch)
	}
	if tc, ok := first.(*tls.Conn); !s.h2 && (!ok || tc.ConnectionState().NegotiatedProtocol != "h2") {
		t := &h1Transport{dial: func(ctx context.Context) (net.Conn, error) {
			c, err := dial(ctx)
			if err != nil || c == first || redial == nil {
				return c, err
			}
			return redial(ctx, c, true)
		}}
		return withFirstIdle(t, first, &used)
	}
	tr := &http.Transport{
		Proxy:               nil,
		ForceAttemptHTTP2:   true,
		DisableCompression:  true, // pass Content-Encoding through untouched
		MaxConnsPerHost:     maxUpstreamConns,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// An HTTP/1 head, or an HTTP/2 header list (net/http passes it on).
		MaxResponseHeaderBytes: maxResponseHead,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			slot, err := s.upstreams.takeSlot(ctx, requestDone(ctx)) // connset.go
			if err != nil {
				return nil, err
			}
			c, err := dial(ctx)
			if err != nil {
				slot.release()
				return nil, err
			}
			if c == first {
				// Cleartext: the connection dialled before the session
				// is counted nowhere (each request's record counts its
				// bytes); wrapped, headDeadline sees its reads.
				cc := &countedConn{Conn: c, n: &s.upBytes}
				s.upCounted.Store(cc)
				c = cc
			}
			return &framingConn{Conn: c, slot: slot}, nil // HTTP/1: no h2c upstream
		},
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: upstreamH2ReceivePerConnection,
			MaxReceiveBufferPerStream:     upstreamH2ReceivePerStream,
			SendPingTimeout:               upstreamH2PingAfter.Load(),
			PingTimeout:                   upstreamH2PingTimeout.Load(),
		},
	}
	var takeUp *firstTakeUp // nil unless first is HTTP/2
	if redial != nil {
		takeUp = newFirstTakeUp(first)
		idle := &idleCloser{closeIdle: tr.CloseIdleConnections}
		tr.DialTLSContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			if err := takeUp.wait(ctx); err != nil { // h2first.go
				return nil, err
			}
			// An idle HTTP/2 connection gives its slot up (idleslots.go).
			slot, err := s.upstreams.takeSlotClosingIdle(ctx, requestDone(ctx), idle)
			if err != nil {
				return nil, err
			}
			// The dial, once it has a slot, is not given up when net/http
			// cancels it: CloseIdleConnections, which a dial waiting for a
			// slot calls every idleSlotCheck (idleslots.go), also cancels
			// every dial no request waits for, each of which has spent a
			// turn of the dial pace (against an origin allowing one
			// stream a connection, dials fell from 16 to about 2 a second).
			// It completes into net/http's pool, bounded by the slot and
			// the dial timeout.
			dctx := context.WithoutCancel(ctx)
			c, err := dial(dctx)
			if err == nil && c != first {
				cc := countedUnder(c)
				if c, err = redial(dctx, c, false); err != nil && ctx.Err() != nil {
					// net/http gave the dial up (its request had a
					// connection): the destination refused nothing.
					cc.giveBack()
				}
			}
			if err != nil {
				slot.release()
				return nil, err
			}
			// HTTP/2 needs the *tls.Conn itself (the transport looks for
			// it); HTTP/1 gets framingConn's rule. An HTTP/2 connection
			// holds its slot until it closes, through the countedConn
			// under its TLS: net/http's own count does not bound it, as
			// a connection full of streams it reset and whose origin
			// never acks the PING that would free them leaves its pool
			// (and MaxConnsPerHost's count) while it stays open.
			if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
				if cc := countedUnder(c); cc != nil {
					cc.handshaken()
					cc.holdSlot(slot)
				} else {
					slot.release()
				}
				return c, nil
			}
			return &framingConn{Conn: c, slot: slot}, nil
		}
	}
	return withFirstIdle(oneHostTransport{tr, dest, newUpstreamWait(s.upBytes.in.Load), takeUp}, first, &used)
}

// withFirstIdle closes first, the connection dialled (and verified) before
// the client's first request, once it has waited the idle timeout
// (h1IdleTimeout) and no request took it up (used), as a kept connection
// is closed: it is in no transport's idle pool until a request has used
// it, so a client that completed its handshake and sent nothing kept it
// as long as the destination allowed.
func withFirstIdle(tr upstreamTransport, first net.Conn, used *atomic.Bool) upstreamTransport {
	if first == nil {
		return tr
	}
	t := time.AfterFunc(h1IdleTimeout, func() {
		if !used.Swap(true) {
			first.Close()
		}
	})
	return firstIdleTransport{tr, t}
}

// firstIdleTransport is a transport whose first connection has an idle
// timer (withFirstIdle).
type firstIdleTransport struct {
	upstreamTransport
	timer *time.Timer
}

// CloseIdleConnections implements upstreamTransport; it also releases
// the timer, which would hold the first connection until it fires.
func (t firstIdleTransport) CloseIdleConnections() {
	t.timer.Stop()
	t.upstreamTransport.CloseIdleConnections()
}

// oneHostTransport gives every request the same URL host, the session's
// destination, before http.Transport sees it: the transport keeps its
// connections, and counts them against MaxConnsPerHost, per URL host, and
// an HTTP/2 client's :authority is the URL host as it wrote it. Varied
// (WWW.example.test, www.EXAMPLE.test), every name would have had its own
// pool and its own bound, while every connection goes to the one
// destination anyway. What is sent as Host or :authority is req.Host,
// which roundTrip has set.
type oneHostTransport struct {
	*http.Transport
	host string
	wait *upstreamWait // the session's requests with no response head yet (h2wait.go)
	// first is the take-up of the session's first connection, if HTTP/2
	// (h2first.go).
	first *firstTakeUp
}

func (t oneHostTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.roundTripRechecked(req, nil)
}

// roundTripRechecked implements upstreamTransport.
func (t oneHostTransport) roundTripRechecked(req *http.Request, reload *tunnelReload) (*http.Response, error) {
	// The headDeadline holds what the request's copy needs for as long
	// (its context value, trace and URL): one allocation, not four.
	hd := &headDeadline{used: usedConnOf(req.Context()), reqDone: req.Context().Done(),
		beforeFirstUp: !t.first.isUp()}
	ctx, cancel := context.WithCancelCause(req.Context())
	hd.cancel = cancel
	hd.ctx = headDeadlineCtx{Context: ctx, d: hd}
	hd.startWait(t.wait)
	hd.trace = httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			t.first.gotConn(info.Conn)
			hd.gotConn(info)
			recheckHead(reload, info.Conn, cancel)
		},
		GetConn:              hd.askedConn,
		GotFirstResponseByte: hd.start,
		Got1xxResponse:       hd.got1xx,
	}
	// A copy: the transport must not change the caller's request.
	r := req.WithContext(httptrace.WithClientTrace(&hd.ctx, &hd.trace))
	hd.url = *req.URL
	hd.url.Host = t.host
	r.URL = &hd.url
	if _, ok := r.Header["Expect"]; ok {
		// net/http sends a held body after an answer that came first on
		// a connection it keeps, and an origin that answered thinking it
		// would not come may read it as a request nothing decided: only
		// h1Transport holds a body for the origin's 100 (expect.go).
		r.Header = r.Header.Clone()
		delete(r.Header, "Expect")
	}
	resp, err := t.Transport.RoundTrip(r)
	if fc, n1xx := hd.stop(); fc != nil {
		resp = endFaulty(fc, n1xx, req, resp, cancel)
	}
	if err != nil && errors.Is(context.Cause(ctx), errResponseHeadTimeout) {
		err = fmt.Errorf("response head not complete %v after its first byte: %w", responseHeadTimeout, err)
	}
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, errUpstreamWait) {
		err = cause // roundTrip answers it 503 (upstreamFailStatus)
	}
	return resp, err
}

// unrecheckedTransport is an http.Transport whose requests no reload
// decides again: the trust host's, which dials nothing.
type unrecheckedTransport struct{ *http.Transport }

func (t unrecheckedTransport) roundTripRechecked(req *http.Request, _ *tunnelReload) (*http.Response, error) {
	return t.RoundTrip(req)
}

// recheckHead decides a request again (tunnelReload.checkHead) once
// http.Transport has given it c, after any wait for a slot among the
// session's upstream connections (up to upstreamWaitTimeout), for a dial,
// or for a kept connection: the head goes next. Denied, the request's
// context ends (cancel) with the deny as its cause; an HTTP/1 connection,
// which net/http writes the head on next whatever the context says, is
// closed first, so that nothing of the request reaches it (one kept idle
// is lost with it: a reload that denies a name mid-wait is rare). An
// HTTP/2 connection carries other streams and stays: its stream is given
// up with the context, which net/http looks at before it writes the
// HEADERS, though not always (its choice between a ready context and a
// free writer is random).
func recheckHead(reload *tunnelReload, c net.Conn, cancel context.CancelCauseFunc) {
	err := reload.checkHead()
	if err == nil {
		return
	}
	cancel(err)
	if fc, ok := c.(*framingConn); ok {
		fc.Close()
	}
}

// maxConnsPerRequest bounds the new connections one request is tried on.
// net/http tries a request again, on another connection and with no
// bound, when its connection ended before taking it: an HTTP/2 origin's
// GOAWAY naming no stream, a kept HTTP/1 connection closed under it. An
// origin that answers every request so (a hostile one, or one shutting
// down for good) had one client request dial, and handshake, thousands
// of times a second until the client gave up. A stale kept connection or
// an origin's graceful restart costs one try, two at most.
//
// Only the connections dialled for the request count (the session's
// first one too, when the request is the one that takes it), once made,
// and not those other requests took or net/http closed unused
// (dialcredit.go). Kept idle
// connections it is tried on do not: an origin whose keep-alive timeout
// closes a session's idle connections together (up to
// MaxIdleConnsPerHost of them) could have an honest request lose the
// race on each, and be refused, though a new connection would have
// served it. Those tries are bounded without a count: a kept connection
// that refused a request is no longer kept, and only connections dialled
// (and counted, for the requests they were dialled for) are kept anew;
// once none is kept, the request's next try dials, and counts.
const maxConnsPerRequest = 3

// errRefusedTooOften ends a request the destination took on none of
// maxConnsPerRequest connections.
var errRefusedTooOften = fmt.Errorf("the destination refused the request on %d connections (closed them, or sent GOAWAY, before taking it)", maxConnsPerRequest)

// headDeadlineKey is the context key of a request's headDeadline: the
// transport's dial takes the request's context values (not its
// cancellation), and counts the connections dialled for it.
type headDeadlineKey struct{}

// newConnFor refuses a new connection for the request whose context (its
// values: net/http dials under the request's values, not its
// cancellation) ctx is, if it is one of oneHostTransport's, once
// maxConnsPerRequest connections count for it (dialcredit.go): it
// returns errRefusedTooOften, which also ends the request, as the cause
// of its context (net/http may otherwise go on to wait for another
// request's connection). A connection counts once it is made
// (dialledFor): a request's dials that are still waiting for their turn
// do not, as net/http may start one each time the request finds no
// connection, and the connections of earlier ones went to others.
//
// But a dial let through is under way (dialing) until its connection is
// made or it fails, and while those that count and those under way reach
// the bound the next dial waits for one under way to end, then looks
// again. net/http does start a second dial for a request whose first is
// under way: when it hands the request a connection from its pool meanwhile
// (one an origin's GOAWAY is closing), the request fails on it and asks
// again. Both let through, an origin refusing every request was dialled
// 4 times for one (TestOriginGoAwayEveryRequest, 2 runs in 300 at load 5).
// It returns the request's headDeadline, nil if none, whose dialEnded the
// dial calls once its connection is made (and counted) or it failed.
func newConnFor(ctx context.Context) (*headDeadline, error) {
	hd, ok := ctx.Value(headDeadlineKey{}).(*headDeadline)
	if !ok {
		return nil, nil
	}
	if err := hd.dialStart(ctx); err != nil {
		if errors.Is(err, errRefusedTooOften) {
			hd.cancel(errRefusedTooOften)
		}
		return nil, err
	}
	return hd, nil
}

// maxUpstreamConns bounds the upstream connections of one HTTP/2 client
// connection: towards an HTTP/1 upstream each of its concurrent streams
// (up to 250, goproxy's server allows) would otherwise dial one, a flood
// of the destination from the appliance's address, counted in no flow
// table; towards an HTTP/2 upstream that never acks a PING, each stream
// the client reset would (upstreamH2PingAfter's comment). Streams beyond it wait for a connection to come free, as a
// browser's requests to one host over HTTP/1 do, up to maxStreamsInFlight
// of them (streamcap.go) and for upstreamWaitTimeout at most (h2wait.go). A connection counts
// until it really closes, held by a faulty response's body too
// (connset.go's slots).
const maxUpstreamConns = 8

// handshakeUpstream completes the TLS handshake of a further upstream
// connection c; it closes c when that fails.
func (s *session) handshakeUpstream(ctx context.Context, c net.Conn, cfg *tls.Config) (net.Conn, error) {
	tc := tls.Client(c, cfg)
	// A custom DialTLSContext bypasses the transport's own handshake
	// timeout, and a request's context has no deadline.
	hctx, cancel := context.WithTimeout(ctx, s.ic.cfg.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}
