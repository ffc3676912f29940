package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// HandleTCP implements netstack.Handler. The destination is dialled before
// the client's handshake completes, so a refused or unreachable destination
// reaches the client as a RST, the way a direct connection would fail. A
// flow the policy denies on its addresses alone is refused before anything
// is dialled; the rest is decided once the first bytes say what it is.
func (p *Proxy) HandleTCP(req *netstack.TCPRequest) {
	start := time.Now()
	rec := newRecord("tcp", req.Flow)
	if reason := p.forbidden(req.Flow.Dest.Addr()); reason != "" {
		req.Reject()
		p.deny(rec, start, reason)
		return
	}
	pol := p.cfg.Policy.Load()
	pf := policy.Flow{Dest: req.Flow.Dest, Client: req.Flow.Client.Addr(), Endpoint: rec.Endpoint}
	if d, ok := pol.DecideEarly(pf); ok {
		req.Reject()
		rec.Rule = d.Rule
		p.deny(rec, start, "denied by policy")
		return
	}
	p.stats.tcpActive.Add(1)
	var f *flow
	defer func() {
		if f == nil || !f.detached {
			p.stats.tcpActive.Add(-1)
		}
	}()

	up, err := p.dialer.DialContext(context.Background(), "tcp", req.Flow.Dest.String())
	if err != nil {
		req.Reject()
		p.stats.tcpDialErrors.Add(1)
		rec.Result, rec.Error = dialResult(err), err.Error()
		p.finish(rec, start)
		return
	}
	client, err := req.Accept()
	if err != nil {
		up.Close()
		rec.Result, rec.Error = "error", err.Error()
		p.finish(rec, start)
		return
	}
	f = &flow{p: p, rec: rec, start: start, pol: pol, pf: pf, up: up}
	f.serve(client)
}

var relayBufPool = sync.Pool{New: func() any {
	b := make([]byte, 64<<10)
	return &b
}}

type closeWriter interface{ CloseWrite() error }

// Relay copies bytes both ways between client and upstream until both
// directions have ended, passing each half-close on. It returns the bytes
// sent upstream and back, and the first error other than a clean EOF; an
// error in one direction aborts the other. Both connections are closed when
// it returns.
func Relay(client, upstream net.Conn) (out, in int64, err error) {
	var outErr error
	done := make(chan struct{})
	go func() {
		out, outErr = halfRelay(upstream, client)
		close(done)
	}()
	in, inErr := halfRelay(client, upstream)
	<-done
	client.Close()
	upstream.Close()
	return out, in, errors.Join(outErr, inErr)
}

// halfRelay copies src to dst, then half-closes dst. On an error it resets
// both, so the opposite direction ends too and each peer sees the failure as
// the reset it was, not as a clean close.
func halfRelay(dst, src net.Conn) (int64, error) {
	bufp := relayBufPool.Get().(*[]byte)
	defer relayBufPool.Put(bufp)
	// Plain Read/Write loop: io.CopyBuffer would hand off to ReadFrom or
	// WriteTo and skip the pooled buffer.
	var n int64
	buf := *bufp
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				abort(src)
				abort(dst)
				return n, werr
			}
		}
		if rerr == io.EOF {
			if cw, ok := dst.(closeWriter); ok {
				_ = cw.CloseWrite()
			} else {
				dst.Close()
			}
			return n, nil
		}
		if rerr != nil {
			abort(src)
			abort(dst)
			if errors.Is(rerr, net.ErrClosed) {
				return n, nil // closed by the other direction's error
			}
			return n, rerr
		}
	}
}
