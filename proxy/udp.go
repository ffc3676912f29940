package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// HandleUDP implements netstack.Handler: one connected host socket per flow,
// datagrams relayed both ways until the flow is idle for UDPIdleTimeout.
func (p *Proxy) HandleUDP(flow netstack.FlowInfo, client net.Conn) {
	start := time.Now()
	rec := newRecord("udp", flow)
	defer client.Close()
	if reason := p.forbidden(flow.Dest.Addr()); reason != "" {
		p.deny(rec, start, reason)
		return
	}
	d := p.cfg.Policy.Load().Decide(policy.Flow{
		Protocol: policy.ProtoUDP, Dest: flow.Dest, Client: flow.Client.Addr(), Endpoint: rec.Endpoint,
	})
	if rec.Rule = d.Rule; d.Action == policy.Deny {
		p.deny(rec, start, "denied by policy")
		return
	}
	p.active.Add(1)
	defer p.active.Done()
	p.stats.udpActive.Add(1)
	defer p.stats.udpActive.Add(-1)

	up, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(flow.Dest))
	if err != nil {
		rec.Result, rec.Error = dialResult(err), err.Error()
		p.finish(rec, start)
		return
	}
	defer up.Close()

	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	idle := p.cfg.UDPIdleTimeout
	done := make(chan struct{})
	var outErr error
	go func() {
		rec.BytesOut, outErr = p.udpCopy(up, client, &last, idle)
		close(done)
	}()
	var inErr error
	rec.BytesIn, inErr = p.udpCopy(client, up, &last, idle)
	<-done
	if err := errors.Join(outErr, inErr); err != nil {
		rec.Result, rec.Error = dialResult(err), err.Error()
	}
	p.finish(rec, start)
}

// udpCopy relays datagrams from src to dst until neither direction has seen
// one for idle, then closes both so the other direction ends as well.
func (p *Proxy) udpCopy(dst, src net.Conn, last *atomic.Int64, idle time.Duration) (int64, error) {
	bufp := relayBufPool.Get().(*[]byte)
	defer relayBufPool.Put(bufp)
	buf := *bufp
	var n int64
	for {
		_ = src.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		nr, err := src.Read(buf)
		if err != nil {
			// gonet reports a passed deadline with a timeout error of its
			// own, not os.ErrDeadlineExceeded, and a read on a gonet UDP
			// conn closed by the other direction as io.EOF.
			var nerr net.Error
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout() {
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction was busy
				}
				err = nil
			}
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				err = nil
			}
			src.Close()
			dst.Close()
			return n, err
		}
		last.Store(time.Now().UnixNano())
		if _, err := dst.Write(buf[:nr]); err != nil {
			// A destination port that answers ICMP unreachable shows up
			// here as a refused write; the flow ends like a dead one.
			src.Close()
			dst.Close()
			return n, err
		}
		n += int64(nr)
	}
}
