package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
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
	d := p.cfg.Policy.Load().Decide(policy.Subject{
		Protocol: policy.ProtoUDP, Dest: flow.Dest, Client: flow.Client.Addr(), Endpoint: rec.Endpoint,
	})
	if rec.Rule = d.Rule; d.Action == policy.Deny {
		p.deny(rec, start, "denied by policy")
		return
	}
	p.stats.udpActive.Add(1)
	defer p.stats.udpActive.Add(-1)

	up, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(flow.Dest))
	if err != nil {
		rec.Result, rec.Error = records.DialResult(err), err.Error()
		p.finish(rec, start)
		return
	}
	defer up.Close()

	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	idle := p.cfg.UDPIdleTimeout
	var queries, answers func([]byte)
	if flow.Dest.Port() == 53 {
		dl := &dnsLog{p: p, base: *rec, pending: make(map[uint16]dnsQuestion)}
		queries, answers = dl.query, dl.answer
		defer dl.close()
	}
	done := make(chan struct{})
	var outErr error
	go func() {
		rec.BytesOut, outErr = p.udpCopy(up, client, &last, idle, queries)
		close(done)
	}()
	var inErr error
	rec.BytesIn, inErr = p.udpCopy(client, up, &last, idle, answers)
	<-done
	if err := errors.Join(outErr, inErr); err != nil {
		rec.Result, rec.Error = records.DialResult(err), err.Error()
	}
	p.finish(rec, start)
}

// udpCopy relays datagrams from src to dst until neither direction has seen
// one for idle, then closes both so the other direction ends as well. seen,
// if set, looks at each datagram relayed.
func (p *Proxy) udpCopy(dst, src net.Conn, last *atomic.Int64, idle time.Duration, seen func([]byte)) (int64, error) {
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
		if seen != nil {
			seen(buf[:nr])
		}
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

// dnsLog turns the DNS traffic of one UDP flow into one record per query:
// name, type, and the answer's rcode, or a timeout for queries the flow
// ended without an answer to.
type dnsLog struct {
	p       *Proxy
	base    records.Record // a snapshot: the flow's own record changes as it runs
	mu      sync.Mutex
	pending map[uint16]dnsQuestion
}

type dnsQuestion struct {
	msg   dnsMessage
	size  int
	start time.Time
}

// maxPendingDNS bounds the queries a flow can leave unanswered in memory.
const maxPendingDNS = 1024

func (d *dnsLog) query(b []byte) {
	m, err := parseDNS(b)
	if err != nil || m.Response {
		return
	}
	d.mu.Lock()
	if len(d.pending) < maxPendingDNS {
		d.pending[m.ID] = dnsQuestion{msg: m, size: len(b), start: time.Now()}
	}
	d.mu.Unlock()
}

func (d *dnsLog) answer(b []byte) {
	m, err := parseDNS(b)
	if err != nil || !m.Response {
		return
	}
	d.mu.Lock()
	q, ok := d.pending[m.ID]
	if ok && q.msg.Name == m.Name && q.msg.Type == m.Type {
		delete(d.pending, m.ID)
	}
	d.mu.Unlock()
	if ok {
		d.write(q, dnsRCodeName(m.RCode), int64(len(b)), "ok")
	}
}

func (d *dnsLog) write(q dnsQuestion, rcode string, in int64, result string) {
	r := d.base
	r.Kind, r.QueryName, r.QueryType, r.RCode = "dns", q.msg.Name, dnsTypeName(q.msg.Type), rcode
	r.BytesOut, r.BytesIn, r.Result = int64(q.size), in, result
	d.p.finish(&r, q.start)
}

func (d *dnsLog) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, q := range d.pending {
		d.write(q, "", 0, "timeout")
		delete(d.pending, id)
	}
}
