package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recordingDispatcher keeps the packets delivered to it, flattened.
type recordingDispatcher struct{ pkts [][]byte }

func (r *recordingDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	r.pkts = append(r.pkts, pkt.Data().AsRange().ToSlice())
}
func (*recordingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// tcpWire is a whole TCP packet as a client sends it: checksums filled.
func tcpWire(t *testing.T, src, dst tcpip.Address, seq uint32, flags header.TCPFlags, payload []byte) []byte {
	t.Helper()
	pb := gsoSegment(t, fragFamilies[0].src, fragFamilies[0].dst, seq, flags, payload, 0)
	defer pb.DecRef()
	pkt := pb.ToView().AsSlice()
	ipLen := 20
	if src.Len() == 16 {
		ipLen = 40
		ip6 := make([]byte, 40)
		header.IPv6(ip6).Encode(&header.IPv6Fields{PayloadLength: uint16(len(pkt) - 20), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src, DstAddr: dst})
		pkt = append(ip6, pkt[20:]...)
	} else {
		ip := header.IPv4(pkt)
		ip.SetSourceAddress(src)
		ip.SetDestinationAddress(dst)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	tcp := header.TCP(pkt[ipLen:])
	tcp.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, sum))
	return pkt
}

// Segments GRO merges reach the stack with checksums that hold for the
// merged packet: the link does not promise the stack it checked them, so
// the stack checks them again.
func TestCoalescerChecksums(t *testing.T) {
	for _, fam := range []struct {
		name     string
		src, dst tcpip.Address
	}{
		{"IPv4", tcpip.AddrFrom4([4]byte{198, 18, 0, 5}), tcpip.AddrFrom4([4]byte{198, 18, 9, 9})},
		{"IPv6", tcpip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, 15: 5}), tcpip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, 15: 9})},
	} {
		t.Run(fam.name, func(t *testing.T) {
			rec := &recordingDispatcher{}
			c := newCoalescer()
			c.fix.next = rec
			c.gro.Dispatcher = &c.fix
			var want []byte
			for i := range 4 {
				payload := bytes.Repeat([]byte{byte('a' + i)}, 1000)
				want = append(want, payload...)
				pkt := tcpWire(t, fam.src, fam.dst, uint32(1+1000*i), header.TCPFlagAck, payload)
				pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
				pb.NetworkProtocolNumber = header.IPv4ProtocolNumber
				if fam.src.Len() == 16 {
					pb.NetworkProtocolNumber = header.IPv6ProtocolNumber
				}
				c.gro.Enqueue(pb)
				pb.DecRef()
			}
			c.gro.Flush()
			if len(rec.pkts) != 1 {
				t.Fatalf("%d packets delivered, want the 4 segments merged into 1", len(rec.pkts))
			}
			pkt := rec.pkts[0]
			ipLen := 20
			if fam.src.Len() == 16 {
				ipLen = 40
			} else if !header.IPv4(pkt).IsChecksumValid() {
				t.Fatal("merged packet: bad IPv4 header checksum")
			}
			tcp := header.TCP(pkt[ipLen:])
			if !tcp.IsChecksumValid(fam.src, fam.dst, checksum.Checksum(tcp.Payload(), 0), uint16(len(tcp.Payload()))) {
				t.Fatal("merged packet: bad TCP checksum")
			}
			if !bytes.Equal(tcp.Payload(), want) {
				t.Fatal("merged packet: payload differs")
			}
		})
	}
}

// An IPv6 packet whose TCP header follows an extension header is left as it
// is: fixMerged would otherwise write a "checksum" into the extension
// header.
func TestFixMergedLeavesExtensionHeaders(t *testing.T) {
	src, dst := tcpip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, 15: 5}), tcpip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, 15: 9})
	pkt := tcpWire(t, src, dst, 1, header.TCPFlagAck, []byte("payload"))
	// Insert an empty destination-options header (8 bytes) after the fixed one.
	ext := []byte{byte(header.TCPProtocolNumber), 0, 1, 4, 0, 0, 0, 0}
	withExt := append(append(append([]byte(nil), pkt[:40]...), ext...), pkt[40:]...)
	ip := header.IPv6(withExt)
	ip.SetNextHeader(uint8(header.IPv6DestinationOptionsExtHdrIdentifier))
	ip.SetPayloadLength(uint16(len(withExt) - 40))
	want := bytes.Clone(withExt)
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(withExt)})
	defer pb.DecRef()
	pb.RXChecksumValidated = true // as GRO marks what it checked
	fixMerged(pb)
	if got := pb.Data().AsRange().ToSlice(); !bytes.Equal(got, want) {
		t.Fatalf("fixMerged changed a packet with an extension header:\n got %x\nwant %x", got, want)
	}
}
