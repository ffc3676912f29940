package netstack

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestTapShowsOnlyRepliesSent: a reply the return path fails to send
// (send_error) never reached the client, so the Tap must not be shown it,
// on the single-datagram path (sendInner: the echo relay, held ACKs) and
// the batch path (sendReplies: what the stacks write). The return path is
// the real bound one, on loopback; sending to port 0, which Linux refuses
// (EINVAL), makes every send fail, and a real listener's port makes them
// succeed.
func TestTapShowsOnlyRepliesSent(t *testing.T) {
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	for _, tc := range []struct {
		name      string
		replyPort uint16
		wantOut   int
	}{
		{"send fails", 0, 0},
		{"send succeeds", sink.LocalAddr().(*net.UDPAddr).AddrPort().Port(), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tap := &recordTap{}
			var fallbacks atomic.Uint64
			listener, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer listener.Close()
			ret := newBoundReturn(netip.MustParseAddr("127.0.0.1"), listener, tc.replyPort, &fallbacks)
			defer ret.close()
			s := &Server{flows: newFlowTable(16, time.Hour, time.Hour), ret: ret, done: make(chan struct{})}
			s.cfg.MTU = DefaultMTU
			s.cfg.Tap = tap
			st := &endpointStack{srv: s, endpoint: 7, link: &link{srv: s, endpoint: 7, mtu: DefaultMTU}}
			s.stacks.Store(uint64(7), st)
			d := benchDatagrams(&testing.B{}, 10)[3]
			// The flow's GWLB address: the reply leaves from its port.
			s.handleDatagram(d, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t))), nil)
			h, _ := ParseHeader(d)
			inner := d[h.Len:]
			r := append([]byte(nil), inner...)
			copy(r[12:16], inner[16:20])
			copy(r[16:20], inner[12:16])
			copy(r[20:22], inner[22:24])
			copy(r[22:24], inner[20:22])
			const innerOff = outerHeadroom + MaxGeneveHeader

			buf := make([]byte, maxDatagram)
			copy(buf[innerOff:], r)
			s.sendInner(7, buf, innerOff, len(r), 1, nil)

			b := getReplyBatch()
			bb := b.buf()
			copy(bb[innerOff:], r)
			if dgram, gwlb, ok := s.wrapReply(7, bb, innerOff, len(r), 2, nil, true, &b.taps[b.n]); ok {
				b.add(dgram, gwlb)
			}
			s.sendReplies(b)
			b.release()

			out := 0
			for _, p := range tap.seen {
				if p.out {
					out++
					if string(p.pkt) != string(r) {
						t.Errorf("the Tap saw %x, want the reply %x", p.pkt, r)
					}
				}
			}
			sendErrors := s.stats.drops[DropSendError].Load()
			if out != tc.wantOut || sendErrors != uint64(2-tc.wantOut) {
				t.Fatalf("the Tap saw %d replies sent, send_error %d; want %d and %d", out, sendErrors, tc.wantOut, 2-tc.wantOut)
			}
		})
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
