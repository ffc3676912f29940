package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// udpRefusalPacket builds an IPv4 or IPv6 UDP datagram from src to dst carrying
// payload, with a checksum that holds; udpLen, if not 0, replaces the UDP
// length field (and the checksum is taken over that many bytes).
func udpRefusalPacket(src, dst netip.Addr, payload []byte, udpLen int) []byte {
	ihl := 20
	if src.Is6() {
		ihl = 40
	}
	b := make([]byte, ihl+8+len(payload))
	u := b[ihl:]
	binary.BigEndian.PutUint16(u[0:], 5000)
	binary.BigEndian.PutUint16(u[2:], 53)
	if udpLen == 0 {
		udpLen = len(u)
	}
	binary.BigEndian.PutUint16(u[4:], uint16(udpLen))
	copy(u[8:], payload)
	if src.Is6() {
		b[0], b[6], b[7] = 0x60, protoUDP, 64
		binary.BigEndian.PutUint16(b[4:], uint16(len(u)))
		copy(b[8:], src.AsSlice())
		copy(b[24:], dst.AsSlice())
	} else {
		b[0], b[8], b[9] = 0x45, 64, protoUDP
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		copy(b[12:], src.AsSlice())
		copy(b[16:], dst.AsSlice())
		binary.BigEndian.PutUint16(b[10:], ^checksum.Checksum(b[:20], 0))
	}
	if n := min(udpLen, len(u)); n >= 8 {
		sum := checksum.Checksum(src.AsSlice(), 0)
		sum = checksum.Checksum(dst.AsSlice(), sum)
		sum = checksum.Combine(sum, protoUDP)
		sum = checksum.Combine(sum, uint16(n))
		binary.BigEndian.PutUint16(u[6:], ^checksum.Checksum(u[:n], sum))
	}
	return b
}

// TestStackRefusesUDP: a UDP length the datagram does not hold, or below
// the header, is refused as gVisor refuses it (header.UDPValid); a missing
// checksum passes on IPv4 (RFC 768) and fails on IPv6, and one that does
// not hold fails; trailing bytes past the UDP length are not summed.
func TestStackRefusesUDP(t *testing.T) {
	v4s, v4d := netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("198.18.9.9")
	v6s, v6d := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8:9::9")
	zeroSum := func(b []byte) []byte {
		off := 20
		if b[0]>>4 == 6 {
			off = 40
		}
		b[off+6], b[off+7] = 0, 0
		return b
	}
	badSum := func(b []byte) []byte { b[len(b)-1] ^= 0x40; return b }
	for _, c := range []struct {
		name        string
		pkt         []byte
		refused     bool
		sumsFailing bool
	}{
		{"v4 good", udpRefusalPacket(v4s, v4d, []byte("query"), 0), false, false},
		{"v6 good", udpRefusalPacket(v6s, v6d, []byte("query"), 0), false, false},
		{"v4 length past the datagram", udpRefusalPacket(v4s, v4d, []byte("query"), 14), true, false},
		{"v4 length below the header", udpRefusalPacket(v4s, v4d, []byte("query"), 7), true, false},
		{"v4 trailing bytes past the length", udpRefusalPacket(v4s, v4d, []byte("query"), 10), false, false},
		{"v4 no checksum", zeroSum(udpRefusalPacket(v4s, v4d, []byte("query"), 0)), false, false},
		{"v6 no checksum", zeroSum(udpRefusalPacket(v6s, v6d, []byte("query"), 0)), false, true},
		{"v4 bad checksum", badSum(udpRefusalPacket(v4s, v4d, []byte("query"), 0)), false, true},
		{"v6 bad checksum", badSum(udpRefusalPacket(v6s, v6d, []byte("query"), 0)), false, true},
	} {
		et := uint16(EtherTypeIPv4)
		if c.pkt[0]>>4 == 6 {
			et = EtherTypeIPv6
		}
		p, reason := ParsePacket(c.pkt, et)
		if reason != DropNone {
			t.Fatalf("%s: ParsePacket: %v", c.name, reason)
		}
		if got := stackRefuses(&p, c.pkt[:p.Len]) != DropNone; got != c.refused {
			t.Errorf("%s: refused %v, want %v", c.name, got, c.refused)
		}
		if c.refused {
			continue
		}
		if got := sumsFail(&p, c.pkt[:p.Len]); got != c.sumsFailing {
			t.Errorf("%s: checksums failing %v, want %v", c.name, got, c.sumsFailing)
		}
	}
}

// TestSynDataCutIPv6: an IPv6 SYN carrying data is shown cut to its
// headers, with its payload length and TCP checksum mended and Len the
// copy's; the packet itself is left whole for the stack.
func TestSynDataCutIPv6(t *testing.T) {
	src, dst := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8:9::9")
	data := []byte("GET /d-syn/ HTTP/1.1\r\n\r\n")
	b := make([]byte, 40+24+len(data)) // a TCP header with 4 bytes of options (MSS)
	b[0], b[6], b[7] = 0x60, protoTCP, 64
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	copy(b[8:], src.AsSlice())
	copy(b[24:], dst.AsSlice())
	tcp := b[40:]
	binary.BigEndian.PutUint16(tcp[0:], 41000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12], tcp[13] = 6<<4, flagSyn
	copy(tcp[20:], []byte{2, 4, 0x05, 0xb4})
	copy(tcp[24:], data)
	tcpChecksum := func(src, dst netip.Addr, tcp []byte) uint16 {
		sum := checksum.Checksum(src.AsSlice(), 0)
		sum = checksum.Checksum(dst.AsSlice(), sum)
		sum = checksum.Combine(sum, protoTCP)
		sum = checksum.Combine(sum, uint16(len(tcp)))
		return checksum.Checksum(tcp, sum)
	}
	binary.BigEndian.PutUint16(tcp[16:], ^tcpChecksum(src, dst, tcp))
	whole := append([]byte(nil), b...)
	p, reason := ParsePacket(b, EtherTypeIPv6)
	if reason != DropNone || stackRefuses(&p, b) != DropNone || sumsFail(&p, b) {
		t.Fatalf("the SYN is refused: %v", reason)
	}
	cut := synDataCut(&p, b)
	if len(cut) != 64 || p.Len != 64 || binary.BigEndian.Uint16(cut[4:]) != 24 {
		t.Fatalf("cut to %d bytes, Len %d, payload length %d; want 64, 64, 24", len(cut), p.Len, binary.BigEndian.Uint16(cut[4:]))
	}
	if tcpChecksum(src, dst, cut[40:]) != 0xffff {
		t.Error("the cut SYN's TCP checksum does not hold")
	}
	if string(b) != string(whole) {
		t.Error("the packet the stack gets was changed")
	}
}
