package proxy

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// DefaultMaxUDPFlowsPerClient is how many UDP flows one client may hold at
// once unless Config.MaxUDPFlowsPerClient says otherwise.
//
// Every UDP flow holds a host socket, and the kernel gives each one an
// ephemeral port of its own (a connected but unbound UDP socket never
// shares its port, whatever its destination): 28,232 ports by default,
// 64,512 at most. Without a share, one client opening flows as fast as it
// can (a scan, a broken retry loop) would take every port and stop every
// other client's DNS. 1,024 is far below the range, and above what even a
// busy NAT'ing client needs: a Kubernetes node SNATs all its pods to its
// own address, so its pods' flows are one client's, but DNS flows end a
// second after their answer, so a node doing 500 lookups a second holds
// about 500 of them, and the rest (QUIC connections, NTP) are long-lived
// and few. A NAT instance for a whole VPC needs more: raise the share.
const DefaultMaxUDPFlowsPerClient = 1024

// shareRecordEvery is how often a client at its share gets an access record
// for the flows it has dropped: each drop is counted, but a client that
// floats at its share, or floods new flows, must not flood the log.
const shareRecordEvery = 10 * time.Second

// udpState is the proxy's UDP state beyond single flows.
type udpState struct {
	shares     udpShares
	shareDrops atomic.Uint64
	// quicSmuggled counts client datagrams dropped because they would
	// start a QUIC connection on a flow decided for another (see
	// udpFlow.smuggled).
	quicSmuggled atomic.Uint64
	// checkDrops counts client datagrams dropped while their flow waited
	// for its destination check (checkWait).
	checkDrops atomic.Uint64
	held       atomic.Int64 // denied flows held (deniedUDP), at most maxDeniedUDP
	// heldShares counts each client's held denied flows, at most
	// maxDeniedUDPPerClient; unheld the denied flows closed instead of
	// held, their client at its share or the hold full.
	heldShares udpShares
	unheld     atomic.Uint64
	// dnsPending counts each client's DNS queries waiting for answers.
	dnsPending dnsPending
	// quicPaths remembers each client's QUIC flows, for their new paths.
	quicPaths quicPaths
}

// udpShares counts what each client holds of a resource shared by all
// clients: UDP flows (host ports), or TCP connections still waiting to be
// classified (tcpState.waiting).
type udpShares struct {
	// what names the resource and its flag, for the drop records.
	what string
	mu   sync.Mutex
	m    map[shareKey]*shareEntry
}

// shareKey is a client as the share counts it: its address behind one GWLB
// endpoint, an IPv6 client by its prefix (--ipv6-client-prefix), as the flow
// table's own per-client bound counts it (package clientkey says why).
type shareKey struct {
	endpoint uint64
	client   netip.Addr
}

type shareEntry struct {
	flows      int
	recorded   time.Time // when a drop was last recorded
	unrecorded int       // drops since then
}

func clientShareKey(f netstack.FlowInfo) shareKey {
	return shareKey{endpoint: f.Endpoint, client: clientkey.Of(f.Client.Addr())}
}

func (p *Proxy) udpShareLimit() int {
	if n := p.cfg.MaxUDPFlowsPerClient; n > 0 {
		return n
	}
	return DefaultMaxUDPFlowsPerClient
}

// acquire takes one of the client's flows. When the client holds its share
// already it returns false, and, at most every shareRecordEvery per client,
// a reason to record the drop with (how many drops went unrecorded since);
// "" means drop without a record.
func (s *udpShares) acquire(k shareKey, limit int, now time.Time) (ok bool, record string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[shareKey]*shareEntry)
	}
	e := s.m[k]
	if e == nil {
		e = &shareEntry{}
		s.m[k] = e
	}
	if e.flows < limit {
		e.flows++
		return true, ""
	}
	if now.Sub(e.recorded) < shareRecordEvery {
		e.unrecorded++
		return false, ""
	}
	what := s.what
	if what == "" {
		what = "UDP flows, its share (--max-udp-flows-per-client)"
	}
	// An IPv6 client's share is its prefix's, which neighbours may hold:
	// "the client's /80 holds", never "the client holds" for flows that
	// may not be its own.
	record = fmt.Sprintf("%s holds %d %s", clientkey.Holder(k.client), limit, what)
	if e.unrecorded > 0 {
		record += fmt.Sprintf("; %d more new flows dropped since the last such record", e.unrecorded)
	}
	e.recorded, e.unrecorded = now, 0
	return false, record
}

// release gives a flow back. A client's entry goes once it holds none: the
// map holds only clients with flows. Drops it had not recorded yet are then
// only in the counter.
func (s *udpShares) release(k shareKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[k]; e != nil {
		if e.flows--; e.flows <= 0 {
			delete(s.m, k)
		}
	}
}
