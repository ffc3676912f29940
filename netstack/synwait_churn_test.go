package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestSynWaitChurnBounded: a client churning its flows in a full table
// (RST then SYN with data, round-robin over more ports than the table
// holds, so each pair evicts a flow and makes one again) keeps at most its
// share of waiting SYNs, and never more than the global cap. The
// one-waiter bit lived in the Flow, and a flow evicted and made again had
// a fresh one while the old goroutine still waited (755 waiting for a
// 16-flow client); with that fixed, an evicted flow's SYN still waited
// until its next look (up to 2 ms), and a 16-flow client kept 69 to 515
// waiting with no cap. A RST whose checksum fails, which the stack drops,
// starts no wait at all; RSTs the stack takes but ignores (out of its
// window) make SYNs wait, up to the client's share ("capped", the global
// cap lifted) or the global cap ("global cap", lowered to 8).
func TestSynWaitChurnBounded(t *testing.T) {
	for _, mode := range []string{"bad checksum", "capped", "global cap"} {
		t.Run(mode, func(t *testing.T) { testSynWaitChurn(t, mode) })
	}
}

func testSynWaitChurn(t *testing.T, mode string) {
	badSum := mode == "bad checksum"
	const table, tuples = 96, 97
	h := &AcceptHandler{Conns: make(chan *Conn, 100)}
	gwlb := gwlbSocket(t, "127.0.0.2:0")
	gwlb.SetReadBuffer(4 << 20)
	s := startServer(t, Config{Handler: h, MaxFlows: table, MaxFlowsPerClient: table,
		ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	limit := int32(maxSynWaitersPerClient)
	s.synWaitCap = 1 << 30
	if mode == "global cap" {
		limit = 8
		s.synWaitCap = limit
	}
	server := netip.MustParseAddrPort("198.18.9.9:443")
	cl := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("198.18.0.5"), uint16(41000+i))
	}
	from := netip.MustParseAddrPort("127.0.0.2:47001")
	co := newCoalescer()
	var dgram []byte
	batch := func(pkts ...[]byte) {
		for _, p := range pkts {
			dgram = append(AppendHeader(dgram[:0], EtherTypeIPv4, 0, 7, 8, 9, nil), p...)
			s.handleDatagram(dgram, from, co)
		}
		co.flush()
	}
	// Half-open connections on 17 ports: the stack holds all 17, the table 16.
	for i := range tuples {
		batch(clientSegment(cl(i), server, 1000, 0, header.TCPFlagSyn, nil))
		readReplySegment(t, gwlb, header.TCPFlagSyn|header.TCPFlagAck)
	}
	go func() { // drain replies
		buf := make([]byte, maxDatagram)
		for {
			if _, err := gwlb.Read(buf); err != nil {
				return
			}
		}
	}()
	payload := make([]byte, 1400)
	sweepers := func() int {
		buf := make([]byte, 32<<20)
		n := runtime.Stack(buf, true)
		return strings.Count(string(buf[:n]), "netstack.(*synPoller).sweep(")
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	start := time.Now()
	pairs := 0
	var most int32
	mostSweepers := 0
	const churn = 40 * time.Millisecond // twice the longest wait
	for time.Since(start) < churn {
		i := pairs % tuples
		rst := clientSegment(cl(i), server, 1001+1<<30, 0, header.TCPFlagRst, nil) // out of the window: ignored
		if badSum {
			rst = clientSegment(cl(i), server, 1001, 0, header.TCPFlagRst, nil)
			rst[len(rst)-4] ^= 0xff // a RST whose checksum fails: the stack drops it, the connection stays
		}
		if n := s.synWaiters.Load(); n > most {
			most = n
		}
		if pairs%64 == 0 {
			mostSweepers = max(mostSweepers, sweepers())
		}
		batch(rst, clientSegment(cl(i), server, 5000+uint32(pairs), 0, header.TCPFlagSyn, payload))
		pairs++
	}
	runtime.ReadMemStats(&ms1)
	w := int(s.synWaiters.Load())
	t.Logf("%d RST+SYN pairs in %v over %d ports; table %d flows (the client's flow share %d): %d SYNs waiting at the end, at most %d at once, looked at by at most %d goroutines; heap in use +%d KiB; flows in table %d, evicted %d",
		pairs, churn, tuples, table, table, w, most, mostSweepers, (int64(ms1.HeapInuse)-int64(ms0.HeapInuse))>>10, s.flows.Len(), s.flows.evicted.Load())
	if mostSweepers > 1 {
		t.Errorf("%d goroutines looked at the waiting SYNs at once; one looks at all", mostSweepers)
	}
	if w > int(limit) || most > limit {
		t.Errorf("%d SYNs wait at the end, at most %d at once, for one client holding at most %d flows; bound %d", w, most, table, limit)
	}
	if badSum && w+int(most) != 0 {
		t.Errorf("%d SYNs wait after RSTs whose checksums fail, which the stack drops", max(w, int(most)))
	}
	waitUntil(t, 5*time.Second, "the waiting SYNs gone", func() (bool, string) {
		return s.synWaiters.Load() == 0, fmt.Sprintf("%d waiting", s.synWaiters.Load())
	})
}
