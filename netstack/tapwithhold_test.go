package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// payloadTap records the payloads of the client's TCP segments the server
// shows its tap, and every client packet whole.
type payloadTap struct {
	mu       sync.Mutex
	payloads [][]byte
	pkts     [][]byte
}

func (pt *payloadTap) Packet(_ uint64, _ uint32, out bool, _ int64, p Packet, pkt []byte) {
	if out {
		return
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.pkts = append(pt.pkts, bytes.Clone(pkt))
	if p.Proto != protoTCP || p.Fragment {
		return
	}
	if data := header.TCP(pkt[p.Payload:p.Len]).Payload(); len(data) > 0 {
		pt.payloads = append(pt.payloads, bytes.Clone(data))
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

// gatedHandler holds each connection attempt after the first pass ones
// until gate closes, as the proxy does while it decides or dials the
// destination.
type gatedHandler struct {
	AcceptHandler
	gate chan struct{}
	pass atomic.Int32
}

func (h *gatedHandler) HandleTCP(req *TCPRequest) {
	if h.pass.Add(-1) < 0 {
		<-h.gate
	}
	h.AcceptHandler.HandleTCP(req)
}

// sawAny reports whether the tap was shown any of pkts, as they are.
func (pt *payloadTap) sawAny(pkts [][]byte) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, p := range pt.pkts {
		for _, q := range pkts {
			if bytes.Equal(p, q) {
				return true
			}
		}
	}
	return false
}

// sawPart reports whether the tap was shown a packet holding part.
func (pt *payloadTap) sawPart(part string) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for _, p := range pt.pkts {
		if bytes.Contains(p, []byte(part)) {
			return true
		}
	}
	return false
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

// tapReuseRig is a server with a tap whose client has an established
// connection; its handler holds every later connection attempt until
// gate closes.
type tapReuseRig struct {
	t              *testing.T
	s              *Server
	tap            *payloadTap
	h              *gatedHandler
	gwlb           *net.UDPConn
	client, server netip.AddrPort
	ether          uint16
	ack            uint32 // the client's ACK on the first connection
	accepted       *Conn  // the first connection
	co             *coalescer
	dgram          []byte
	opened         sync.Once
}

func newTapReuseRig(t *testing.T, v6 bool) *tapReuseRig {
	r := &tapReuseRig{t: t, tap: &payloadTap{}, co: newCoalescer(), ether: EtherTypeIPv4,
		client: netip.MustParseAddrPort("198.18.0.5:40001"), server: netip.MustParseAddrPort("198.18.9.9:80")}
	if v6 {
		r.client, r.server = netip.MustParseAddrPort("[2001:db8::5]:40001"), netip.MustParseAddrPort("[2001:db8::9]:80")
		r.ether = EtherTypeIPv6
	}
	r.h = &gatedHandler{AcceptHandler: AcceptHandler{Conns: make(chan *Conn, 4)}, gate: make(chan struct{})}
	r.h.pass.Store(1)
	r.gwlb = gwlbSocket(t, "127.0.0.2:0")
	r.s = startServer(t, Config{Handler: r.h, Tap: r.tap, ReplyPort: r.gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	t.Cleanup(r.open)
	r.send(clientSegment(r.client, r.server, 1000, 0, header.TCPFlagSyn, nil))
	r.ack = readReplySegment(t, r.gwlb, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber() + 1
	r.send(clientSegment(r.client, r.server, 1001, r.ack, header.TCPFlagAck, nil))
	r.accepted = r.accept()
	r.send(clientSegment(r.client, r.server, 1001, r.ack, header.TCPFlagAck|header.TCPFlagPsh, []byte("hello")))
	return r
}

func (r *tapReuseRig) send(pkt []byte) {
	r.dgram = append(AppendHeader(r.dgram[:0], r.ether, 0, 7, 0x0a1b2c3d4e5f6071, 0x11223344, nil), pkt...)
	r.s.handleDatagram(r.dgram, netip.MustParseAddrPort("127.0.0.2:47001"), r.co)
	r.co.flush()
}

func (r *tapReuseRig) accept() *Conn {
	select {
	case c := <-r.h.Conns:
		r.t.Cleanup(c.Abort)
		return c
	case <-time.After(5 * time.Second):
		r.t.Fatal("no connection accepted")
		return nil
	}
}

// ignoredRstThenSyn reads the rig's first 5 bytes on its connection, then
// sends a RST out of the connection's window, which the stack ignores
// (the connection lives), and a SYN, which waits for the stack to let go
// of the connection (synwait.go): 20 ms, as it does not. It returns the
// connection, its deadline 5 s on.
func (r *tapReuseRig) ignoredRstThenSyn(t *testing.T) *Conn {
	t.Helper()
	c := r.accepted
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	r.send(clientSegment(r.client, r.server, 1006+0x40000000, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
	r.send(clientSegment(r.client, r.server, 90000, 0, header.TCPFlagSyn, nil))
	return c
}

// open lets the connection attempts held so far, and later ones, go on.
func (r *tapReuseRig) open() { r.opened.Do(func() { close(r.h.gate) }) }

// TestTapWithholdsDecoyOnReusedPorts: the flow of a connection the client
// reset (or closed) stays established in the table, and a client's ACK
// makes a reset flow established again: a decoy after a new SYN on the
// same ports, before the SYN-ACK, or after the RST alone, once the stack
// let the connection go, or in one burst with the RST and the SYN, which
// waits for the stack to take the RST (synwait.go), was shown to the tap,
// with no look at whether a connection could take it. The stack answers
// it with a RST.
func TestTapWithholdsDecoyOnReusedPorts(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, mode := range []string{"new SYN", "data after the RST", "SYN waiting"} {
			t.Run(fmt.Sprintf("v6=%v/%s", v6, mode), func(t *testing.T) {
				r := newTapReuseRig(t, v6)
				r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
				if mode != "SYN waiting" {
					waitUntil(t, 5*time.Second, "the stack to let the reset connection go", func() (bool, string) {
						k := flowKeyOf(r.client, r.server)
						return !r.s.holdsTCP(&k), "held"
					})
				}
				decoy := "GET /fine/readme.txt"
				switch mode {
				case "data after the RST":
					r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagAck|header.TCPFlagPsh, []byte(decoy)))
				default:
					r.send(clientSegment(r.client, r.server, 50000, 0, header.TCPFlagSyn, nil))
					r.send(clientSegment(r.client, r.server, 50001, 5000, header.TCPFlagAck|header.TCPFlagPsh, []byte(decoy)))
				}
				if mode == "SYN waiting" {
					// Held behind the SYN, decided as its wait ends.
					waitUntil(t, 5*time.Second, "the SYN's wait to end", func() (bool, string) {
						return r.s.synWaiters.Load() == 0, "waiting"
					})
				}
				if r.tap.saw(decoy) {
					t.Errorf("the tap was shown the decoy %q, which no connection took", decoy)
				}
				if got := r.s.Stats().TapWithheld; got != 1 {
					t.Errorf("tap_withheld %d, want 1", got)
				}
				if mode == "data after the RST" {
					return
				}
				r.open()
				ack := readReplySegment(t, r.gwlb, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber() + 1
				r.send(clientSegment(r.client, r.server, 50001, ack, header.TCPFlagAck, nil))
				c := r.accept()
				real := "GET /evil/payload.sh"
				r.send(clientSegment(r.client, r.server, 50001, ack, header.TCPFlagAck|header.TCPFlagPsh, []byte(real)))
				got := make([]byte, len(real))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != real || !r.tap.saw(real) {
					t.Errorf("the new connection read %q (%v), the tap saw it: %v; want %q, seen", got, err, r.tap.saw(real), real)
				}
			})
		}
	}
}

// TestTapWithholdsFragmentedDecoy: a decoy after the SYN, before the
// SYN-ACK, cut into IP fragments, is dropped whole (its first fragment
// tcp_no_connection, the others finding no first): shown to the tap, an
// IDS reassembled it.
func TestTapWithholdsFragmentedDecoy(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			r := newTapReuseRig(t, v6)
			r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
			waitUntil(t, 5*time.Second, "the stack to let the reset connection go", func() (bool, string) {
				k := flowKeyOf(r.client, r.server)
				return !r.s.holdsTCP(&k), "held"
			})
			r.send(clientSegment(r.client, r.server, 50000, 0, header.TCPFlagSyn, nil))
			decoy := "GET /fine/readme.txt HTTP/1.1\r\nHost: decoy.example\r\n\r\n"
			mtu := 80
			if v6 {
				mtu = 120
			}
			frags := fragment(clientSegment(r.client, r.server, 50001, 5000, header.TCPFlagAck|header.TCPFlagPsh, []byte(decoy)), 77, mtu)
			for _, f := range frags {
				if !v6 {
					ip := header.IPv4(f)
					ip.SetChecksum(0)
					ip.SetChecksum(^ip.CalculateChecksum())
				}
				r.send(f)
			}
			d := r.s.Stats().Drops
			if r.tap.sawPart("decoy.example") || d["tcp_no_connection"] != 1 || d["fragment_without_flow"] != uint64(len(frags)-1) {
				t.Errorf("%d fragments: tap saw the decoy %v, tcp_no_connection %d, fragment_without_flow %d; want not seen, 1, %d",
					len(frags), r.tap.sawPart("decoy.example"), d["tcp_no_connection"], d["fragment_without_flow"], len(frags)-1)
			}
		})
	}
}

// TestTapShowsLiveDataWhileSynWaits: a RST the stack ignores (out of its
// window) leaves the connection live; a SYN right after it waits
// (synwait.go), and data the client sends meanwhile on the live
// connection is taken by the stack: it must be shown to the tap. Withheld
// while a SYN waited, a client could hide real bytes from an IDS by
// sending such a RST and SYN before each burst.
func TestTapShowsLiveDataWhileSynWaits(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			r := newTapReuseRig(t, v6)
			c := r.ignoredRstThenSyn(t)
			hidden := "POST /exfil"
			r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagAck|header.TCPFlagPsh, []byte(hidden)))
			got := make([]byte, len(hidden))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != hidden {
				t.Fatalf("the live connection read %q (%v), want %q", got, err, hidden)
			}
			if !r.tap.saw(hidden) {
				t.Errorf("the tap was not shown %q, which the live connection took", hidden)
			}
		})
	}
}

// decoyFragments is a decoy segment at seq, cut into IP fragments with
// their checksums set; the last ones hold "decoy.example".
func decoyFragments(r *tapReuseRig, seq uint32) [][]byte {
	decoy := "GET /fine/readme.txt HTTP/1.1\r\nHost: decoy.example\r\n\r\n"
	mtu := 80
	if r.ether == EtherTypeIPv6 {
		mtu = 120
	}
	frags := fragment(clientSegment(r.client, r.server, seq, 5000, header.TCPFlagAck|header.TCPFlagPsh, []byte(decoy)), 77, mtu)
	for _, f := range frags {
		if r.ether == EtherTypeIPv4 {
			ip := header.IPv4(f)
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		}
	}
	return frags
}

// TestTapWithholdsSplitFragmentDecoy: a decoy's first fragment sent while
// the connection lives (no look: a live flow), its other fragments after
// the client's RST and a new SYN: the stack reassembled it with no
// connection there and answered with a RST, and the feed showed every
// fragment. Each later fragment is looked at too: dropped.
func TestTapWithholdsSplitFragmentDecoy(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, burst := range []bool{false, true} {
			t.Run(fmt.Sprintf("v6=%v/burst=%v", v6, burst), func(t *testing.T) {
				r := newTapReuseRig(t, v6)
				frags := decoyFragments(r, 50001)
				r.send(frags[0])
				r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
				if !burst {
					waitUntil(t, 5*time.Second, "the stack to let the reset connection go", func() (bool, string) {
						k := flowKeyOf(r.client, r.server)
						return !r.s.holdsTCP(&k), "held"
					})
				}
				r.send(clientSegment(r.client, r.server, 50000, 0, header.TCPFlagSyn, nil))
				for _, f := range frags[1:] {
					r.send(f)
				}
				d := r.s.Stats().Drops
				if r.tap.sawAny(frags[1:]) || d["tcp_no_connection"]+d["syn_waiting"] == 0 {
					t.Errorf("tap saw the decoy's later fragments %v; tcp_no_connection %d, syn_waiting %d; want not seen, dropped",
						r.tap.sawAny(frags[1:]), d["tcp_no_connection"], d["syn_waiting"])
				}
			})
		}
	}
}

// TestTapBehindWaitingSynPastHold: behind a SYN waiting for the stack to
// take the client's RST, what the hold cannot take (the 9th segment, any
// fragment) was looked at at once, before the stack took the RST (about
// half a millisecond), and a decoy there shown. It is dropped (syn_waiting).
func TestTapBehindWaitingSynPastHold(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, mode := range []string{"9th segment", "fragments"} {
			t.Run(fmt.Sprintf("v6=%v/%s", v6, mode), func(t *testing.T) {
				r := newTapReuseRig(t, v6)
				r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
				r.send(clientSegment(r.client, r.server, 50000, 0, header.TCPFlagSyn, nil))
				if mode == "9th segment" {
					for range maxHeldBehindSyn {
						r.send(clientSegment(r.client, r.server, 50001, 5000, header.TCPFlagAck, nil))
					}
					r.send(clientSegment(r.client, r.server, 50001, 5000, header.TCPFlagAck|header.TCPFlagPsh,
						[]byte("GET /fine/readme.txt HTTP/1.1\r\nHost: decoy.example\r\n\r\n")))
				} else {
					for _, f := range decoyFragments(r, 50001) {
						r.send(f)
					}
				}
				waitUntil(t, 5*time.Second, "the SYN's wait to end", func() (bool, string) {
					return r.s.synWaiters.Load() == 0, "waiting"
				})
				if r.tap.sawPart("decoy.example") {
					t.Errorf("the tap was shown the decoy behind the waiting SYN (syn_waiting %d)", r.s.Stats().Drops["syn_waiting"])
				}
			})
		}
	}
}

// TestTapShowsRequestBehindSynToHalfOpen: the client's connection half
// open (the stack sent its SYN-ACK), a RST out of its window (ignored), a
// SYN the connection does not reset on (a copy of its SYN, or one out of
// its window: an ACK answers it) that waits its whole 20 ms, then the ACK
// of the SYN-ACK with the request: held behind the SYN, the request
// completes the handshake and the connection takes it, so the tap must be
// shown it. Counting a half-open connection as taking none of the held
// data hid it (30 of 30).
func TestTapShowsRequestBehindSynToHalfOpen(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, isn := range []uint32{1000, 1000 + 0x80000000} {
			t.Run(fmt.Sprintf("v6=%v/isn=%d", v6, isn), func(t *testing.T) {
				r := newTapReuseRig(t, v6)
				r.client = netip.AddrPortFrom(r.client.Addr(), 40002) // a port of its own, half-open
				r.open()
				r.send(clientSegment(r.client, r.server, 1000, 0, header.TCPFlagSyn, nil))
				ack := readReplySegment(t, r.gwlb, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber() + 1
				r.send(clientSegment(r.client, r.server, 1001+0x40000000, 0, header.TCPFlagRst, nil))
				r.send(clientSegment(r.client, r.server, isn, 0, header.TCPFlagSyn, nil))
				request := "GET /evil/hidden-from-ids HTTP/1.1\r\nHost: evil.example\r\n\r\n"
				r.send(clientSegment(r.client, r.server, 1001, ack, header.TCPFlagAck|header.TCPFlagPsh, []byte(request)))
				c := r.accept()
				got := make([]byte, len(request))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != request {
					t.Fatalf("the connection read %q (%v), want the request", got, err)
				}
				if !r.tap.saw(request) {
					t.Errorf("the stack took the request, the tap was never shown it (tap_withheld %d)", r.s.Stats().TapWithheld)
				}
			})
		}
	}
}

// TestTapHeldSegmentsShownInTheStacksOrder: a segment that comes as the
// wait behind which others were held ends goes to the stack after them,
// and so to the tap: it reached the stack first while the tap showed the
// held one first, at the same sequence number (an IDS rebuilt other bytes
// than the stack took).
func TestTapHeldSegmentsShownInTheStacksOrder(t *testing.T) {
	inverted, tries := 0, 0
	for range 100 {
		r := newTapReuseRig(t, false)
		c := r.ignoredRstThenSyn(t) // the connection lives, the SYN waits 20 ms
		k := flowKeyOf(r.client, r.server)
		f := r.s.flows.Lookup(&k)
		if f.synWait.Load() == nil {
			continue
		}
		tries++
		r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagAck|header.TCPFlagPsh, []byte("XXXXXXXX")))
		// The moment the wait looks over to deliver, as close as can be.
		for deadline := time.Now().Add(5 * time.Second); f.synWait.Load() != nil && time.Now().Before(deadline); {
		}
		r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagAck|header.TCPFlagPsh, []byte("YYYYYYYY")))
		got := make([]byte, 8)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		r.tap.mu.Lock()
		first := ""
		for _, p := range r.tap.payloads {
			if s := string(p); s == "XXXXXXXX" || s == "YYYYYYYY" {
				first = s
				break
			}
		}
		r.tap.mu.Unlock()
		if first != string(got) {
			inverted++
		}
	}
	if tries == 0 {
		t.Fatal("no SYN waited")
	}
	t.Logf("%d of %d inverted", inverted, tries)
	if inverted > 0 {
		t.Errorf("the tap showed first other bytes than the stack took at the same sequence number in %d of %d", inverted, tries)
	}
}

// TestTapShowsICMPErrorAboutClosedConnection: an ICMP error from the
// client about its TCP flow is no TCP data, whatever the bytes at its
// quoted segment's data offset say: it is shown to the tap also when the
// stack holds no connection on the flow (it was withheld as data no
// connection could take).
func TestTapShowsICMPErrorAboutClosedConnection(t *testing.T) {
	r := newTapReuseRig(t, false)
	r.send(clientSegment(r.client, r.server, 1006, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
	waitUntil(t, 5*time.Second, "the stack to let the reset connection go", func() (bool, string) {
		k := flowKeyOf(r.client, r.server)
		return !r.s.holdsTCP(&k), "held"
	})
	quoted := clientSegment(r.server, r.client, r.ack, 1006, header.TCPFlagAck|header.TCPFlagPsh, []byte("reply bytes"))
	errPkt := icmpError(r.client.Addr(), r.server.Addr(), quoted)
	errPkt[20], errPkt[21] = 3, 3 // port unreachable
	binary.BigEndian.PutUint16(errPkt[22:], 0)
	binary.BigEndian.PutUint16(errPkt[22:], ^checksum.Checksum(errPkt[20:], 0))
	r.send(errPkt)
	if !r.tap.sawAny([][]byte{errPkt}) {
		t.Errorf("the client's ICMP error about its flow was not shown (tap_withheld %d, drops %v)", r.s.Stats().TapWithheld, r.s.Stats().Drops)
	}
}

// TestTapWithheldSegmentNotBatched: a client's data right after its SYN
// (a blind ACK, no PSH) was looked at while the stack held no connection,
// withheld, and held in the reader's batch (the coalescer); the proxy
// accepting the connection before the batch ended made the connection
// that then took it: a request the stack read and the feed never showed.
// A withheld segment goes in at once: before the connection, which answers
// it with a RST (the client sends it again).
func TestTapWithheldSegmentNotBatched(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			r := newTapReuseRig(t, v6)
			r.client = netip.AddrPortFrom(r.client.Addr(), 40003)
			put := func(pkt []byte) { // into the batch, not flushed
				r.dgram = append(AppendHeader(r.dgram[:0], r.ether, 0, 7, 0x0a1b2c3d4e5f6071, 0x11223344, nil), pkt...)
				r.s.handleDatagram(r.dgram, netip.MustParseAddrPort("127.0.0.2:47001"), r.co)
			}
			put(clientSegment(r.client, r.server, 1000, 0, header.TCPFlagSyn, nil))
			r.co.flush()
			request := "GET /evil/hidden-from-ids HTTP/1.1\r\nHost: x\r\n\r\n"
			put(clientSegment(r.client, r.server, 1001, 5000, header.TCPFlagAck, []byte(request)))
			r.open() // the proxy accepts within the batch
			ack := readReplySegment(t, r.gwlb, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber() + 1
			r.co.flush() // the batch ends
			// The handshake completes, if the blind ACK did not.
			r.send(clientSegment(r.client, r.server, 1001, ack, header.TCPFlagAck, nil))
			c := r.accept()
			got := make([]byte, len(request))
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, _ := io.ReadFull(c, got)
			if n > 0 && !r.tap.saw(request) {
				t.Errorf("the connection took %d bytes of the request that the tap was never shown", n)
			}
		})
	}
}

// TestTapHoldBehindSynBoundedInBytes: behind a waiting SYN the hold takes
// at most maxHeldBytesBehindSyn, whatever the segments' size: 8 jumbo
// frames a wait, 64 waits a client, held 4.6 MiB for one client.
func TestTapHoldBehindSynBoundedInBytes(t *testing.T) {
	r := newTapReuseRig(t, false)
	r.ignoredRstThenSyn(t)
	k := flowKeyOf(r.client, r.server)
	f := r.s.flows.Lookup(&k)
	w := f.synWait.Load()
	if w == nil {
		t.Fatal("the SYN did not wait behind a RST the stack ignores")
	}
	dropped := r.s.Stats().Drops["syn_waiting"]
	for i := range maxHeldBehindSyn {
		r.send(clientSegment(r.client, r.server, 1006+uint32(i*8000), r.ack, header.TCPFlagAck, make([]byte, 8000)))
	}
	w.mu.Lock()
	held, bytes, done := len(w.held), w.heldBytes, w.done
	w.mu.Unlock()
	// A wait over before the last send (a slow machine) drops nothing.
	if bytes > maxHeldBytesBehindSyn || !done && r.s.Stats().Drops["syn_waiting"] == dropped {
		t.Errorf("held %d segments, %d bytes (syn_waiting drops %d); want at most %d bytes, the rest dropped",
			held, bytes, r.s.Stats().Drops["syn_waiting"]-dropped, maxHeldBytesBehindSyn)
	}
}
