package netstack

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoSegment builds a TCP packet as gVisor's TCP hands it to a host-GSO
// link: headers pushed in front of the payload, the TCP checksum left
// partial, GSO options set.
func gsoSegment(t *testing.T, src, dst netip.AddrPort, seq uint32, flags header.TCPFlags, payload []byte, mss uint16) *stack.PacketBuffer {
	t.Helper()
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 128, Payload: buffer.MakeWithData(payload)})
	tcp := header.TCP(pb.TransportHeader().Push(header.TCPMinimumSize + 12))
	tcp.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: 77, DataOffset: header.TCPMinimumSize + 12, Flags: flags, WindowSize: 512})
	copy(tcp[header.TCPMinimumSize:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}) // NOP NOP timestamps
	tcp.SetChecksum(0x1234)                                                        // partial: whatever the stack left
	gsoType := stack.GSOTCPv4
	if src.Addr().Is4() {
		ip := header.IPv4(pb.NetworkHeader().Push(header.IPv4MinimumSize))
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(pb.Size()), ID: 0xfff0, Flags: header.IPv4FlagDontFragment, TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4())})
	} else {
		gsoType = stack.GSOTCPv6
		ip := header.IPv6(pb.NetworkHeader().Push(header.IPv6MinimumSize))
		ip.Encode(&header.IPv6Fields{PayloadLength: uint16(pb.Size() - header.IPv6MinimumSize), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
			SrcAddr: tcpip.AddrFrom16(src.Addr().As16()), DstAddr: tcpip.AddrFrom16(dst.Addr().As16())})
	}
	pb.GSOOptions = stack.GSO{Type: gsoType, NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, MSS: mss, MaxSize: gsoMaxSize}
	return pb
}

// TestBatchSegments: a segment handed over for host GSO leaves as packets of
// at most the MSS, each valid on its own (lengths, IPv4 header checksum,
// TCP checksum), in sequence, with FIN and PSH on the last only and CWR on
// the first only, and together carrying the payload exactly.
func TestBatchSegments(t *testing.T) {
	const mss = 1000
	for _, fam := range fragFamilies {
		for _, size := range []int{0, 1, mss - 1, mss, mss + 1, 5 * mss, 64*mss + 17, gsoMaxSize - 200} {
			cp := &capturePath{}
			s := &Server{flows: newFlowTable(16, time.Hour, time.Hour), ret: cp}
			s.cfg.MTU = DefaultMTU
			client := Packet{IPv6: fam.src.Addr().Is6(), Proto: protoTCP, Src: fam.dst.Addr().As16(), Dst: fam.src.Addr().As16(), SrcPort: fam.dst.Port(), DstPort: fam.src.Port()}
			k := client.Key(7)
			ether := uint16(EtherTypeIPv4)
			if fam.src.Addr().Is6() {
				ether = EtherTypeIPv6
			}
			hdr := AppendHeader(nil, ether, 0, 7, 8, 9, nil)
			h, _ := ParseHeader(append(bytes.Clone(hdr), 0x45))
			s.flows.Touch(&k, hdr, h, netip.MustParseAddrPort("127.0.0.2:40000"), 0)

			payload := make([]byte, size)
			rnd := rand.New(rand.NewPCG(uint64(size), 1))
			for i := range payload {
				payload[i] = byte(rnd.Uint32())
			}
			const seq0 = 0xffffff00 // wraps within the segment
			flags := header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr
			pb := gsoSegment(t, fam.src, fam.dst, seq0, flags, payload, mss)
			b := getReplyBatch()
			s.batchSegments(b, 7, pb, 1, nil)
			s.sendReplies(b)
			b.release()
			pb.DecRef()

			want := max((size+mss-1)/mss, 1)
			if len(cp.sent) != want {
				t.Fatalf("%s %d bytes: %d packets, want %d; drops %v", fam.name, size, len(cp.sent), want, s.Stats().Drops)
			}
			var got []byte
			for i, d := range cp.sent {
				gh, r := ParseHeader(d)
				if r != DropNone {
					t.Fatalf("packet %d: GENEVE %s", i, r)
				}
				inner := d[gh.Len:]
				var tcp header.TCP
				var src, dst tcpip.Address
				if fam.src.Addr().Is4() {
					ip := header.IPv4(inner)
					if !ip.IsValid(len(inner)) || !ip.IsChecksumValid() {
						t.Fatalf("packet %d: bad IPv4 header %x", i, inner[:20])
					}
					if ip.ID() != uint16(0xfff0+i) {
						t.Errorf("packet %d: IPv4 ID %#x, want %#x", i, ip.ID(), uint16(0xfff0+i))
					}
					tcp, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
				} else {
					ip := header.IPv6(inner)
					if !ip.IsValid(len(inner)) {
						t.Fatalf("packet %d: bad IPv6 header", i)
					}
					tcp, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
				}
				data := tcp.Payload()
				if len(data) > mss {
					t.Fatalf("packet %d: %d bytes of payload, more than the MSS", i, len(data))
				}
				if !tcp.IsChecksumValid(src, dst, checksum.Checksum(data, 0), uint16(len(data))) {
					t.Fatalf("packet %d of %d: bad TCP checksum", i, len(cp.sent))
				}
				if wantSeq := uint32(seq0 + len(got)); tcp.SequenceNumber() != wantSeq {
					t.Fatalf("packet %d: seq %#x, want %#x", i, tcp.SequenceNumber(), wantSeq)
				}
				last, first := i == len(cp.sent)-1, i == 0
				f := tcp.Flags()
				if f.Contains(header.TCPFlagFin) != last || f.Contains(header.TCPFlagPsh) != last || f.Contains(header.TCPFlagCwr) != first || !f.Contains(header.TCPFlagAck) {
					t.Fatalf("packet %d of %d: flags %s", i, len(cp.sent), f)
				}
				if binary.BigEndian.Uint32(tcp[24:]) != 0x0000_0001 || tcp.AckNumber() != 77 {
					t.Fatalf("packet %d: options or ack changed", i)
				}
				got = append(got, data...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("%s %d bytes: payload differs after segmentation", fam.name, size)
			}
			if st := s.Stats(); st.PacketsOut != uint64(want) {
				t.Fatalf("packets_out %d, want %d", st.PacketsOut, want)
			}
		}
	}
}
