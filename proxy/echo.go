package proxy

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// echoRelay relays ICMP echo through the host's unprivileged ICMP ("ping")
// sockets, so a client's ping reports the real destination's answer. One
// socket per (endpoint, client, destination, echo ID) flow; the kernel
// gives each socket its own echo ID, and replies go back to the client with
// the client's.
type echoRelay struct {
	p            *Proxy
	mu           sync.Mutex
	flows        map[echoKey]*echoFlow
	warnedNoSock atomic.Bool
}

type echoKey struct {
	endpoint     uint64
	client, dest netip.Addr
	id           uint16
}

type echoFlow struct {
	conn     *icmp.PacketConn
	dest     net.Addr
	v6       bool
	last     atomic.Int64
	requests atomic.Int64
	bytesOut atomic.Int64
	bytesIn  atomic.Int64
	latest   atomic.Pointer[netstack.EchoRequest] // the reply path of the newest request
}

func (r *echoRelay) init(p *Proxy) {
	r.p = p
	r.flows = make(map[echoKey]*echoFlow)
}

// HandleEcho implements netstack.Handler. It runs on the packet path, so it
// only writes to a socket; replies come back on the flow's own goroutine.
func (p *Proxy) HandleEcho(req netstack.EchoRequest) {
	if reason := p.forbidden(req.Flow.Dest.Addr()); reason != "" {
		p.deny(newRecord("icmp", req.Flow), time.Now(), reason)
		return
	}
	f := p.echo.flow(&req)
	if f == nil {
		req.DropUnavailable()
		return
	}
	f.latest.Store(&req)
	f.last.Store(time.Now().UnixNano())
	typ := icmp.Type(ipv4.ICMPTypeEcho)
	if f.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(req.ID), Seq: int(req.Seq), Data: req.Data}}
	b, err := msg.Marshal(nil)
	if err == nil {
		_, err = f.conn.WriteTo(b, f.dest)
	}
	if err != nil {
		slog.Debug("relaying echo request", "dest", req.Flow.Dest.Addr(), "err", err)
		return
	}
	f.requests.Add(1)
	f.bytesOut.Add(int64(len(req.Data)))
}

func (r *echoRelay) flow(req *netstack.EchoRequest) *echoFlow {
	k := echoKey{req.Flow.Endpoint, req.Flow.Client.Addr(), req.Flow.Dest.Addr(), req.ID}
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.flows[k]; f != nil {
		return f
	}
	network, laddr := "udp4", "0.0.0.0"
	if req.IPv6() {
		network, laddr = "udp6", "::"
	}
	conn, err := icmp.ListenPacket(network, laddr)
	if err != nil {
		if !r.warnedNoSock.Swap(true) {
			slog.Warn("ICMP echo cannot be relayed: the host allows no unprivileged ICMP sockets "+
				"(set net.ipv4.ping_group_range to include the appliance's group); echo requests are dropped and counted",
				"err", err)
		}
		return nil
	}
	f := &echoFlow{conn: conn, v6: req.IPv6(), dest: &net.UDPAddr{IP: req.Flow.Dest.Addr().AsSlice()}}
	f.last.Store(time.Now().UnixNano())
	r.flows[k] = f
	r.p.stats.echoActive.Add(1)
	go r.serve(k, f, newRecord("icmp", req.Flow))
	return f
}

// serve reads the destination's replies for one echo flow until it idles.
func (r *echoRelay) serve(k echoKey, f *echoFlow, rec *Record) {
	start := time.Now()
	defer r.p.stats.echoActive.Add(-1)
	idle := r.p.cfg.EchoIdleTimeout
	proto := 1
	if f.v6 {
		proto = 58
	}
	buf := make([]byte, 65536)
	for {
		_ = f.conn.SetReadDeadline(time.Unix(0, f.last.Load()).Add(idle))
		n, _, err := f.conn.ReadFrom(buf)
		if err != nil {
			if time.Since(time.Unix(0, f.last.Load())) < idle {
				continue
			}
			break
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || (m.Type != ipv4.ICMPTypeEchoReply && m.Type != ipv6.ICMPTypeEchoReply) {
			continue
		}
		req := f.latest.Load()
		// The kernel replaced the client's echo ID with the socket's; the
		// sequence number and data are the destination's own.
		reply := *req
		reply.Seq = uint16(echo.Seq)
		reply.Reply(echo.Data)
		f.bytesIn.Add(int64(len(echo.Data)))
	}
	r.mu.Lock()
	delete(r.flows, k)
	r.mu.Unlock()
	f.conn.Close()
	rec.Packets = f.requests.Load()
	rec.BytesOut, rec.BytesIn = f.bytesOut.Load(), f.bytesIn.Load()
	if rec.BytesIn == 0 {
		rec.Result = "timeout"
	}
	r.p.finish(rec, start)
}
