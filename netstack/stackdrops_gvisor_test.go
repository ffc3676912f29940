package netstack

import (
	"bytes"
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TestStackRefusesFragmentThenHopByHop: a UDP datagram whose fragmentable
// part starts with a hop-by-hop header (Frag -> HBH -> UDP) is refused by
// stackRefuses exactly when a bare gVisor stack refuses it. Sent in two
// fragments, gVisor walks the headers after the fragment header afresh on
// the reassembled datagram, so the hop-by-hop header is first and the
// datagram is delivered; sent whole as an atomic fragment (RFC 6946), the
// walk goes on past the fragment header and the hop-by-hop header is not
// first, so it is dropped.
func TestStackRefusesFragmentThenHopByHop(t *testing.T) {
	src := tcpip.AddrFrom16([16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 15: 5})
	dst := tcpip.AddrFrom16([16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 15: 9})
	payload := []byte("0123456789abcdefghijklmnopqrstuvwxyz0123")
	part := make([]byte, 8+8+len(payload)) // HBH (PadN) + UDP + payload
	part[0], part[2], part[3] = protoUDP, 1, 4
	uh := part[8:]
	binary.BigEndian.PutUint16(uh[0:], 5000)
	binary.BigEndian.PutUint16(uh[2:], 53)
	binary.BigEndian.PutUint16(uh[4:], uint16(len(uh)))
	copy(uh[8:], payload)
	sum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(uh)))
	binary.BigEndian.PutUint16(uh[6:], ^checksum.Checksum(uh, sum))
	frag := func(data []byte, off int, more bool) []byte {
		b := make([]byte, 48+len(data))
		b[0], b[6], b[7] = 0x60, ipv6Fragment, 64
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(data)))
		s, d := src.As16(), dst.As16()
		copy(b[8:], s[:])
		copy(b[24:], d[:])
		fo := uint16(off/8) << 3
		if more {
			fo |= 1
		}
		b[40] = ipv6HopByHop
		binary.BigEndian.PutUint16(b[42:], fo)
		binary.BigEndian.PutUint32(b[44:], 99)
		copy(b[48:], data)
		return b
	}
	for _, c := range []struct {
		name  string
		pkts  [][]byte
		taken bool
	}{
		{"first fragment", [][]byte{frag(part[:24], 0, true), frag(part[24:], 24, false)}, true},
		{"atomic fragment", [][]byte{frag(part, 0, false)}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			first := c.pkts[0]
			p, r := ParsePacket(first, EtherTypeIPv6)
			if r != DropNone {
				t.Fatalf("ParsePacket: %v", r)
			}
			if refused := stackRefuses(&p, first[:p.Len]) != DropNone; refused == c.taken {
				t.Errorf("stackRefuses refuses it: %v; gVisor takes it: %v", refused, c.taken)
			}
			if got := gvisorDeliversUDP(t, src, dst, c.pkts); got != c.taken {
				t.Fatalf("gVisor delivered it: %v, want %v", got, c.taken)
			}
		})
	}
}

// gvisorDeliversUDP reports whether a bare gVisor stack at dst, port 53,
// delivers a datagram when handed pkts.
func gvisorDeliversUDP(t *testing.T, src, dst tcpip.Address, pkts [][]byte) bool {
	t.Helper()
	s := gstack.New(gstack.Options{NetworkProtocols: []gstack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{udp.NewProtocol}})
	defer s.Destroy()
	ep := channel.New(8, 1500, "")
	if err := s.CreateNIC(1, ep); err != nil {
		t.Fatal(err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: dst.WithPrefix()},
		gstack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	var wq waiter.Queue
	u, err := s.NewEndpoint(udp.ProtocolNumber, ipv6.ProtocolNumber, &wq)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Bind(tcpip.FullAddress{NIC: 1, Addr: dst, Port: 53}); err != nil {
		t.Fatal(err)
	}
	for _, b := range pkts {
		pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		ep.InjectInbound(ipv6.ProtocolNumber, pb)
		pb.DecRef()
	}
	var out bytes.Buffer
	_, err = u.Read(&out, tcpip.ReadOptions{})
	return err == nil
}
