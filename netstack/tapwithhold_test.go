package netstack

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// payloadTap records the payloads of the client's TCP segments the server
// shows its tap.
type payloadTap struct {
	mu       sync.Mutex
	payloads [][]byte
}

func (pt *payloadTap) Packet(_ uint64, _ uint32, out bool, _ int64, p Packet, pkt []byte) {
	if out || p.Proto != protoTCP {
		return
	}
	if data := header.TCP(pkt[p.Payload:p.Len]).Payload(); len(data) > 0 {
		pt.mu.Lock()
		pt.payloads = append(pt.payloads, bytes.Clone(data))
		pt.mu.Unlock()
	}
}

func (pt *payloadTap) saw(data string) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, p := range pt.payloads {
		if string(p) == data {
			return true
		}
	}
	return false
}

// gatedHandler holds each connection attempt until gate closes, as the
// proxy does while it decides or dials the destination.
type gatedHandler struct {
	AcceptHandler
	gate chan struct{}
}

func (h *gatedHandler) HandleTCP(req *TCPRequest) {
	<-h.gate
	h.AcceptHandler.HandleTCP(req)
}

// TestTapWithholdsDataBeforeHandshake: a client's data segment sent after
// its SYN, before the stack's SYN-ACK (the stack holds no connection yet:
// it answers with a RST and throws the data away), is not shown to the
// tap, and counted; an IDS shown it took its bytes, a decoy, for the
// stream's first, and the real ones sent after the handshake at the same
// sequence number for a retransmission. The real ones are shown.
func TestTapWithholdsDataBeforeHandshake(t *testing.T) {
	tap := &payloadTap{}
	h := &gatedHandler{AcceptHandler: AcceptHandler{Conns: make(chan *Conn, 1)}, gate: make(chan struct{})}
	gwlb := gwlbSocket(t, "127.0.0.2:0")
	s := startServer(t, Config{Handler: h, Tap: tap, ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	client := netip.MustParseAddrPort("198.18.0.5:40001")
	server := netip.MustParseAddrPort("198.18.9.9:80")
	from := netip.MustParseAddrPort("127.0.0.2:47001")
	co := newCoalescer()
	var dgram []byte
	send := func(pkt []byte) {
		dgram = append(AppendHeader(dgram[:0], EtherTypeIPv4, 0, 7, 0x0a1b2c3d4e5f6071, 0x11223344, nil), pkt...)
		s.handleDatagram(dgram, from, co)
		co.flush()
	}
	send(clientSegment(client, server, 1000, 0, header.TCPFlagSyn, nil))
	decoy, real := "GET /fine/readme.txt", "GET /evil/payload.sh"
	send(clientSegment(client, server, 1001, 5000, header.TCPFlagAck|header.TCPFlagPsh, []byte(decoy)))
	if got := s.Stats().TapWithheld; got != 1 {
		t.Errorf("tap_withheld %d after the decoy, want 1", got)
	}
	close(h.gate)
	synAck := readReplySegment(t, gwlb, header.TCPFlagSyn|header.TCPFlagAck)
	ack := synAck.SequenceNumber() + 1
	send(clientSegment(client, server, 1001, ack, header.TCPFlagAck, nil))
	var c *Conn
	select {
	case c = <-h.Conns:
		t.Cleanup(c.Abort)
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	send(clientSegment(client, server, 1001, ack, header.TCPFlagAck|header.TCPFlagPsh, []byte(real)))
	got := make([]byte, len(real))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != real {
		t.Fatalf("the stack read %q, %v; want %q", got, err, real)
	}
	if tap.saw(decoy) {
		t.Errorf("the tap was shown the decoy %q, which no connection took", decoy)
	}
	if !tap.saw(real) {
		t.Errorf("the tap was not shown %q, which the connection read", real)
	}
	if got := s.Stats().TapWithheld; got != 1 {
		t.Errorf("tap_withheld %d, want 1", got)
	}
}
