package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

type infoHandler struct {
	AcceptHandler
	mu    sync.Mutex
	infos []FlowInfo
}

func (h *infoHandler) HandleTCP(req *TCPRequest) {
	h.mu.Lock()
	h.infos = append(h.infos, req.Flow)
	h.mu.Unlock()
	h.AcceptHandler.HandleTCP(req)
}

func (h *infoHandler) list() []FlowInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]FlowInfo(nil), h.infos...)
}

// TestSynWaitFlowEvicted: a SYN waiting for the stack to let go of the
// reset connection on its 4-tuple, whose flow is evicted meanwhile (a full
// table; its flow, a reset half-open one, is evictable at once), is
// dropped and counted: taken in, a connection attempt the flow table does
// not hold reached the handler with no GWLB attachment or flow cookie (its
// record said attachment 0000000000000000, flow_cookie 00000000), and its
// SYN-ACK was dropped for want of a flow. (The stack's RST|ACK on the old
// connection may still find no flow: that is not the SYN's.) The client's SYN sent again
// makes a new flow and its connection carries the flow's attachment.
func TestSynWaitFlowEvicted(t *testing.T) {
	// The SYN waits only if it comes while the stack still takes the RST,
	// which the stack's goroutine may have done already (tens of
	// microseconds): such a try shows nothing, and another is made.
	for try := 1; ; try++ {
		if synWaitEvicted(t, try == 10) {
			return
		}
		t.Logf("try %d: the SYN did not wait (the stack had let the reset connection go first)", try)
	}
}

// synWaitEvicted plays the test once; it reports false, when not last,
// if the SYN went in without waiting.
func synWaitEvicted(t *testing.T, last bool) bool {
	h := &infoHandler{AcceptHandler: AcceptHandler{Conns: make(chan *Conn, 10)}}
	gwlb := gwlbSocket(t, "127.0.0.2:0")
	s := startServer(t, Config{Handler: h, MaxFlows: 4, MaxFlowsPerClient: 4,
		ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	server := netip.MustParseAddrPort("198.18.9.9:443")
	cl := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("198.18.0.5"), port) }
	from := netip.MustParseAddrPort("127.0.0.2:47001")
	co := newCoalescer()
	var dgram []byte
	batch := func(pkts ...[]byte) {
		for _, p := range pkts {
			dgram = append(AppendHeader(dgram[:0], EtherTypeIPv4, 0, 7, 0x0a1b2c3d4e5f6071, 0x11223344, nil), p...)
			s.handleDatagram(dgram, from, co)
		}
		co.flush()
	}
	a := cl(40001)
	batch(clientSegment(a, server, 1000, 0, header.TCPFlagSyn, nil))
	readReplySegment(t, gwlb, header.TCPFlagSyn|header.TCPFlagAck)
	for p := uint16(40002); p <= 40004; p++ {
		batch(clientSegment(cl(p), server, 5, 5, header.TCPFlagAck, nil))
	}
	if s.flows.Len() != 4 {
		t.Fatalf("table holds %d flows", s.flows.Len())
	}
	drops0 := s.Stats().Drops
	requests0 := len(h.list())
	batch(clientSegment(a, server, 1001, 0, header.TCPFlagRst, nil),
		clientSegment(a, server, 1000+1<<20, 0, header.TCPFlagSyn, nil),
		clientSegment(cl(40005), server, 5, 5, header.TCPFlagAck, nil))
	if !last {
		// Not waiting, the SYN reaches the handler at once, or, in the
		// moment between the stack's letting go of the half-open
		// connection and its forwarder's forgetting its request, is
		// dropped by gVisor's forwarder (the client sends it again).
		deadline := time.Now().Add(2 * time.Second)
		for s.Stats().Drops["syn_wait_abandoned"] == drops0["syn_wait_abandoned"] {
			if len(h.list()) > requests0 || time.Now().After(deadline) {
				return false
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitUntil(t, 5*time.Second, "the waiting SYN dropped", func() (bool, string) {
		d := s.Stats().Drops
		return d["syn_wait_abandoned"] == drops0["syn_wait_abandoned"]+1, fmt.Sprintf("drops %v", d)
	})
	for i, fi := range h.list() {
		if fi.FlowCookie != 0x11223344 || fi.Attachment != 0x0a1b2c3d4e5f6071 {
			t.Errorf("handler request %d: client %v attachment %016x cookie %08x: a SYN taken in with no flow", i+1, fi.Client, fi.Attachment, fi.FlowCookie)
		}
	}
	// The client's SYN again (its 1 s retransmission): a new flow, the
	// stack answers from the connection it made for the orphan SYN.
	gwlb.SetReadDeadline(time.Now().Add(time.Second))
	bufr := make([]byte, maxDatagram)
	for { // drain
		if _, err := gwlb.Read(bufr); err != nil {
			break
		}
	}
	batch(clientSegment(a, server, 1000+1<<20, 0, header.TCPFlagSyn, nil))
	sa := readReplySegment(t, gwlb, header.TCPFlagSyn|header.TCPFlagAck)
	batch(clientSegment(a, server, 1001+1<<20, sa.SequenceNumber()+1, header.TCPFlagAck, nil))
	select {
	case c := <-h.Conns:
		t.Cleanup(c.Abort)
		infos := h.list()
		if fi := infos[len(infos)-1]; fi.FlowCookie != 0x11223344 || fi.Attachment != 0x0a1b2c3d4e5f6071 {
			t.Errorf("the connection made by the SYN sent again: attachment %016x cookie %08x", fi.Attachment, fi.FlowCookie)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the SYN sent again made no connection")
	}
	return true
}
