package intercept

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// newGoproxy returns the HTTP proxy behind intercepted connections. With
// h2, goproxy looks for the HTTP/2 preface first: it waits for 24 bytes, so
// an HTTP/1 client whose whole request is shorter ("GET / HTTP/1.0" and an
// empty line) would wait forever. The sniffer and the ALPN result already
// say which protocol a client speaks, so each gets a proxy of its own.
func newGoproxy(h2 bool) *goproxy.ProxyHttpServer {
	gp := goproxy.NewProxyHttpServer()
	gp.Tr = &http.Transport{Proxy: nil} // unused: every session has its own RoundTripper
	gp.KeepAcceptEncoding = true        // else responses are silently decompressed
	gp.AllowHTTP2 = h2
	gp.Logger = debugLogger{}
	// goproxy formats a line per request when verbose: only when debugging.
	gp.Verbose = slog.Default().Enabled(context.Background(), slog.LevelDebug)
	gp.OnRequest().DoFunc(noteTarget) // the target as the client wrote it: target.go
	// Before goproxy drops the Connection field, what it names: connoptions.go.
	gp.OnRequest().DoFunc(dropConnectionOptions)
	gp.OnRequest().DoFunc(noteH2Stream) // what ended its stream, for its record: h2streamend.go
	gp.OnRequest().HandleConnectFunc(func(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
		rt, _ := ctx.Req.Context().Value(roundTripperKey{}).(*roundTripper)
		if rt == nil { // not one of ours: nothing else reaches this proxy
			return goproxy.RejectConnect, host
		}
		ctx.RoundTripper = rt
		return &goproxy.ConnectAction{Action: goproxy.ConnectMitm}, host
	})
	return gp
}

type debugLogger struct{}

func (debugLogger) Printf(f string, a ...any) { slog.Debug("goproxy: " + fmt.Sprintf(f, a...)) }

type roundTripperKey struct{}

// serveGoproxy feeds the (cleartext) client connection to goproxy as if it
// had arrived through a CONNECT. goproxy serves it on a goroutine of its
// own and closes it when done: the session ends then, in the connection's
// Close. Returning at once spares each intercepted connection a goroutine
// (and its stack, about 9 KiB) that would only wait for that.
func (s *session) serveGoproxy(scheme string, tr upstreamTransport) {
	rt := &roundTripper{s: s, scheme: scheme, tr: tr}
	host := s.Subject.Dest.String()
	if s.Record.SNI != "" {
		host = net.JoinHostPort(s.Record.SNI, strconv.Itoa(int(s.Subject.Dest.Port())))
	}
	cc := &hijackedConn{Conn: s.client, swallow: []byte("HTTP/1.1 200 OK\r\n\r\n")}
	cc.limit.arm(s.ic.cfg.MaxHeaderBytes, s.h2)
	cc.limit.shuttingDown = s.ic.cfg.ShuttingDown
	cc.limit.reclaimed, _ = s.Client.(reclaimable)
	cc.onClose = rt.connClosed
	cc.lingers = s.lingersAtEnd // clientend.go
	cc.destFailed = s.tunnelDestinationFailed
	cc.h1 = !s.h2
	cc.limit.unanswered.notes().onReject = rt.recordRejected // h2reject.go
	rt.cc = cc
	s.serving.Store(rt)
	if s.h2 { // the wait for a request: idle.go
		rt.armIdle()
	} else {
		cc.limit.idleDeadline(cc.Conn)
	}
	rt.base = *s.Record
	// A bump's dest_check was its SNI's, before the handshake: each
	// request's is its own Host's (roundtrip.go), or none.
	rt.base.DestCheck = ""
	creq := (&http.Request{
		Method: http.MethodConnect, URL: &url.URL{Host: host}, Host: host,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: make(http.Header),
		RemoteAddr: netip.AddrPortFrom(s.Subject.Client, s.Record.ClientPort).String(),
	}).WithContext(context.WithValue(context.Background(), roundTripperKey{}, rt))
	gp := s.ic.http1
	if s.h2 {
		gp = s.ic.http2
	}
	gp.ServeHTTP(&hijacker{conn: cc}, creq)
}

// roundTripper is what goproxy needs to serve one session: its round trips
// to the destination. goproxy always sees cleartext: TLS to the client is
// ours (handshakeClient).
type roundTripper struct {
	s      *session
	scheme string // of the client's requests: https when bumped
	tr     upstreamTransport
	cc     *hijackedConn
	base   records.Record // what each request's record starts from: s.Record changes as the session ends
	// tailCut is why a WebSocket tunnel's upstream was reset with its
	// client's upload not all delivered (upgradedBody.closeDelivering):
	// the tls record says it too, as the tunnel's does.
	tailCut atomic.Pointer[error]

	// The session ends once goproxy has closed the connection and no
	// request is in flight: an HTTP/2 server closes it without waiting for
	// the handlers of its streams, which still dial, relay and record. It
	// does not wait for them to start either: a client that sends a
	// request and closes at once has the server start the stream's
	// handler and close the connection, and the handler may reach
	// RoundTrip only after that. So the session also waits for a request
	// for every stream the client opened (headLimit.streams), for
	// h2HandlerGrace at most: a stream the server refused (a malformed
	// request) never gets one.
	inflight atomic.Int64
	// streams is the requests in flight as the bound on them counts
	// them (streamcap.go): inflight's span, but a request whose stream
	// is closed no longer counts.
	streams    streamSlots
	requests   atomic.Int64 // requests that reached RoundTrip
	closed     atomic.Bool
	graceArmed atomic.Bool // the grace's timer is running, or has run
	graceOver  atomic.Bool // no more waiting for streams' handlers to start
	ended      sync.Once
	// idle is an HTTP/2 session's idle timer, idleGrace whether it has
	// waited for a stream's handler since the last request (idle.go).
	idle      *time.Timer
	idleGrace atomic.Bool
}

// h2HandlerGrace bounds how long a session whose HTTP/2 connection has
// closed waits for the handlers of streams opened before the close to
// start. A handler the server started runs at once, give or take the
// scheduler; the wait is only ever this long for a stream the server
// refused.
const h2HandlerGrace = time.Second

// connClosed, requestDone and the grace's timer each end the session if,
// as far as they can see, it is over (tryEnd).
func (rt *roundTripper) connClosed() {
	rt.closed.Store(true)
	rt.tryEnd()
}

func (rt *roundTripper) requestDone() {
	if rt.inflight.Add(-1) == 0 {
		if rt.idle != nil {
			rt.idle.Reset(clientIdleTimeout.Load())
		}
		rt.tryEnd()
	}
}

// busy reports whether a request is in flight, but an HTTP/1 one whose
// response is out (answer.go), or a stream the client opened has no
// answer yet (h2Unanswered): one yet to reach RoundTrip, or whose
// response head has not gone out. Not the count of streams opened
// against requests, as the end of the session waits (tryEnd): a stream
// the server refused (RST_STREAM, no handler: a malformed request, one
// past the advertised concurrency) never reaches RoundTrip, and would
// keep the session busy for good.
func (rt *roundTripper) busy() bool {
	return rt.inflight.Load() > 0 && !rt.answered() || rt.cc.limit.unanswered.waiting()
}

// answered reports whether the request in flight, an HTTP/1 one, is over
// for a client's break: its response is out (answer.go). Not an HTTP/2
// connection's: its streams have their own (h2Unanswered), and many may
// be in flight.
func (rt *roundTripper) answered() bool {
	if rt.cc.limit.isH2.Load() {
		return false
	}
	switch rt.cc.answer.Load() {
	case answerOut:
		return true
	case answerTunnel: // a WebSocket: over once its client sent its FIN
		return rt.s.finBreak.Load()
	}
	return false
}

// busyAtBreak is busy for NoteClientBreak, which takes the client's
// break: an HTTP/1 request it finds in flight and not yet out is cut
// (answer.go), and its record says what the break's Abort says.
func (rt *roundTripper) busyAtBreak() bool {
	if rt.inflight.Load() > 0 && !rt.cc.limit.isH2.Load() && rt.cc.cutAtBreak(rt.s.finBreak.Load()) {
		return true
	}
	return rt.busy()
}

// tryEnd ends the session if goproxy has closed the connection, every
// stream the client opened has reached RoundTrip (or the grace is over),
// and no request is in flight. RoundTrip counts a request in flight before
// it counts it as a request, and tryEnd loads them the other way round
// (sequentially consistent atomics): a request it counts is in flight, or
// done, and its requestDone calls tryEnd again.
func (rt *roundTripper) tryEnd() {
	if !rt.closed.Load() {
		return
	}
	if rt.requests.Load() < rt.cc.limit.streams.Load() && !rt.graceOver.Load() {
		// Armed here, by whichever call first sees a stream waiting, not
		// by connClosed alone: hijackedConn.Read counts a stream once the
		// underlying Read returns, which can be after the close (a
		// tls.Conn hands out what it buffered), and a stream counted then,
		// whose handler never starts, would leave the session waiting for
		// good once its last request is done.
		if rt.graceArmed.CompareAndSwap(false, true) {
			time.AfterFunc(h2HandlerGrace, func() {
				rt.graceOver.Store(true)
				rt.tryEnd()
			})
		}
		return
	}
	if rt.inflight.Load() == 0 {
		rt.end()
	}
}

// end ends the session once goproxy has closed its connection and its last
// request is done.
func (rt *roundTripper) end() {
	rt.ended.Do(func() {
		s := rt.s
		s.markEnding()
		if rt.idle != nil {
			rt.idle.Stop()
		}
		// The client is gone: no upstream connection has a use any more,
		// idle or not (a request that came after the end may hold one).
		rt.tr.CloseIdleConnections()
		s.upstreams.closeAll()
		// The first, whether a request took it up or not (a preconnect, a
		// denied request).
		s.closeUpstream()
		if rt.cc.limit.tooLarge.Load() { // a record for the request that never was
			rec := *s.Record
			rec.Kind, rec.Scheme, rec.Status, rec.BytesIn, rec.BytesOut = "http", rt.scheme, http.StatusRequestHeaderFieldsTooLarge, 0, 0
			rec.Rule, rec.Policy, rec.Method, rec.Host, rec.Path, rec.UserAgent = "", "", "", "", "", ""
			s.ic.denied.Add(1)
			// The limit held to, as measured: h1bounds.go, h2refused.go.
			rec.Action, rec.Result, rec.Error = "deny", "denied", headTooLarge(int64(s.ic.cfg.MaxHeaderBytes))
			if rt.cc.limit.isH2.Load() { // measured as HTTP/2 does: see h2limit.go
				rec.Error = headerListTooLarge(h2MaxHeaderList(int64(s.ic.cfg.MaxHeaderBytes))) // h2refused.go
				if !rt.cc.limit.answered431.Load() {
					rec.Status, rec.Error = 0, listRefusedWithout431(rec.Error) // a trailer block's
				}
			}
			rec.End(s.Start)
			s.ic.write(&rec)
		}
		refused := rt.recordRefused() // h2guard.go
		// A head left unfinished past its deadline: hijackedconn.go.
		timedOut := rt.cc.limit.timedOut.Load()
		// Closed for want of a request (idle.go): no error, and not the
		// client's doing; the record says so, its result left ok.
		idled := rt.cc.limit.idle.out.Load() && !timedOut
		// A head goproxy could not read, after a request or on a bumped
		// connection: recorded as a cleartext connection's first is.
		unread := rt.cc.headUnread() && !rt.cc.limit.tooLarge.Load() && !refused
		if s.Record.Kind == "tls" { // bumped: the connection's record, besides one per request
			if unread && !s.abortedFromOutside() && s.clientBroke() == nil {
				// (A head its client's break cut: the tls record says so.)
				rec := rt.base
				rec.Kind, rec.Scheme, rec.Rule, rec.Policy = "http", rt.scheme, "", ""
				rec.Method, rec.Path, rec.UserAgent = "", "", ""
				rec.BytesOut, rec.BytesIn = 0, 0
				rt.denyUnreadable(&rec)
				rec.End(s.Start)
				s.ic.write(&rec)
			}
			if timedOut && s.Record.Error == "" {
				s.Record.Error = rt.cc.limit.timeoutError()
				if s.Record.Result == "ok" { // as the cleartext record says
					s.Record.Result = "timeout"
				}
			}
			if idled && s.Record.Error == "" {
				s.Record.Error = idleNote()
			}
			rt.noteServerGoAway() // h2streamend.go
			// A reload's deny that ended the linger is said as the reload
			// says it (noteAbort), as the tunnel's record does.
			if p := rt.tailCut.Load(); p != nil && s.Record.Result == "ok" && !errors.Is(*p, errTunnelReloadDenied) {
				s.Record.Result = "reset"
				s.Record.Error = fmt.Sprintf("the client's connection broke after its FIN, and %v", *p)
				if destEndCut(*p) { // as the tunnel's record says it (writeFailed)
					s.Record.Result, s.Record.Error = writeResult(*p), (*p).Error()
				}
			}
			s.finish() // with the destination's bytes, TLS and all
			return
		}
		if (rt.requests.Load() == 0 || timedOut || unread) && !rt.cc.limit.tooLarge.Load() && !refused && rt.cc.in.Load() > 0 {
			// Cleartext bytes came, and no request: goproxy could not
			// read a head (a malformed one, or one cut short) and closed
			// the connection. Nothing went upstream, or came back, but
			// the flow must not go unrecorded. bytes_out and bytes_in are
			// the destination's, 0: the client's bytes in them would let
			// it make a destination look sent whatever it liked (and
			// goproxy's answer is the appliance's). The error says how
			// many the client sent.
			rec := *s.Record
			rec.Kind, rec.Scheme, rec.Rule, rec.Policy = "http", rt.scheme, "", ""
			rec.BytesOut, rec.BytesIn = 0, 0
			if rt.requests.Load() > 0 {
				// A later head: not the first, sniffed, request's, and
				// never read: none of its fields is known, its Host
				// either (the first's would name a host it did not
				// carry, as a bumped connection's record does not).
				rec.Method, rec.Host, rec.Path, rec.UserAgent = "", "", "", ""
			}
			switch {
			case timedOut:
				// The appliance gave up waiting: no refusal, nor a
				// denial to count. The record keeps the decision that
				// let the connection in, as a bumped one's tls record
				// keeps its bump.
				rec.Rule, rec.Policy = s.Record.Rule, s.Record.Policy
				rec.Result, rec.Error = "timeout", rt.cc.limit.timeoutError()
			case idled && rt.requests.Load() == 0:
				// An h2c client's preface, and no request: nothing was
				// refused, the wait for one ran out. The decision that let
				// the connection in, as the timeout's: rule and policy.
				rec.Rule, rec.Policy = s.Record.Rule, s.Record.Policy
				rec.Result, rec.Error = "ok", idleNote()
			case s.abortedFromOutside() || s.clientBroke() != nil:
				// The head was cut, not malformed: the client broke its
				// connection (the watch's Abort, or the read that took
				// the break), or the appliance's drain or stall bound
				// ended it. A request under way, lost: the abort's
				// result and words, the connection's decision, no
				// denial (records.md).
				rec.Rule, rec.Policy = s.Record.Rule, s.Record.Policy
				rec.Error = ""
				if !s.abortedFromOutside() {
					why := s.clientBroke()
					rec.Result, rec.Error = clientBreakResult(why), fmt.Sprintf("the client's connection broke: %v", why)
				}
				s.noteAbort(&rec)
			default:
				rt.denyUnreadable(&rec)
			}
			rec.End(s.Start)
			s.ic.write(&rec)
		}
		s.Done()
	})
}

// denyUnreadable makes rec the deny of a head goproxy could not read (a
// malformed one, or one its client's FIN cut short), and counts it:
// nothing went upstream, and the error says how many bytes the client
// sent.
func (rt *roundTripper) denyUnreadable(rec *records.Record) {
	rec.Action, rec.Result = "deny", "denied"
	rec.Error = fmt.Sprintf("no request could be read: malformed or incomplete request head (%d bytes from the client)", rt.cc.in.Load())
	rt.s.ic.denied.Add(1)
}
