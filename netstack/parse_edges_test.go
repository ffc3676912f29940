package netstack

import (
	"encoding/binary"
	"testing"
)

// These cases were missing when each check below was broken on purpose
// and no test failed (a mutation review): each would let a hostile client
// or sender past a check the parser makes.

// An AWS option whose length runs past the header's option area into the
// inner packet is a bad option length, also when it fits in the datagram:
// its value (the flow cookie, say) would come from the inner packet's
// bytes. The existing overrun case runs past the datagram too, and cannot
// tell the two bounds apart.
func TestOptionRunningIntoTheInnerPacket(t *testing.T) {
	b := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
	b[0]-- // the header ends before the cookie's value; its option header stays
	b = append(b, innerV4...)
	if _, r := ParseHeader(b); r != DropOptionLength {
		t.Fatalf("a cookie option running into the inner packet: %s, want %s", r, DropOptionLength)
	}
}

// A fragment whose offset has only its highest bits set (32,768 bytes into
// an IPv4 datagram; 32,768 into an IPv6 one) is a later fragment: what
// sits where a first fragment's ports and flags would be is the datagram's
// middle, the client's to choose, and must not make or steer a flow.
func TestHighFragmentOffsetsAreLaterFragments(t *testing.T) {
	pkt := append([]byte{}, innerV4...)
	binary.BigEndian.PutUint16(pkt[6:8], 0x1000)
	if p, r := ParsePacket(pkt, EtherTypeIPv4); r != DropNone || !p.Fragment || p.SrcPort != 0 || p.DstPort != 0 {
		t.Errorf("IPv4 fragment at offset 0x1000: %s, Fragment %v, ports %d->%d; want a later fragment without ports", r, p.Fragment, p.SrcPort, p.DstPort)
	}

	v6 := make([]byte, 40+8+20)
	v6[0], v6[6], v6[7] = 0x60, ipv6Fragment, 64
	binary.BigEndian.PutUint16(v6[4:6], 8+20)
	v6[8], v6[23] = 0x20, 1
	v6[24], v6[39] = 0x20, 2
	v6[40] = protoTCP
	binary.BigEndian.PutUint16(v6[42:44], 0x8000) // offset 4096 × 8, no more fragments
	binary.BigEndian.PutUint32(v6[44:48], 7)
	binary.BigEndian.PutUint16(v6[48:50], 40000) // "ports" in the datagram's middle
	binary.BigEndian.PutUint16(v6[50:52], 80)
	v6[60] = 0x50
	if p, r := ParsePacket(v6, EtherTypeIPv6); r != DropNone || !p.Fragment || p.SrcPort != 0 || p.DstPort != 0 {
		t.Errorf("IPv6 fragment at offset 0x8000: %s, Fragment %v, ports %d->%d; want a later fragment without ports", r, p.Fragment, p.SrcPort, p.DstPort)
	}
}

// ICMPv6 inside IPv4 (type 8, an "echo request" if read as ICMPv4), and
// ICMPv4 inside IPv6 (type 128, an ICMPv6 echo request's), are malformed:
// read as ICMP of the other version they would make the appliance ping.
func TestICMPOfTheOtherVersionIsMalformed(t *testing.T) {
	v4 := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, protoICMPv6, 0, 0, 198, 18, 0, 5, 198, 18, 0, 9,
		8, 0, 0, 0, 0, 7, 0, 1}
	if p, r := ParsePacket(v4, EtherTypeIPv4); r != DropInnerMalformed {
		t.Errorf("ICMPv6 in IPv4: %s (echo %v), want %s", r, p.Echo, DropInnerMalformed)
	}
	v6 := make([]byte, 40+8)
	v6[0], v6[6], v6[7] = 0x60, protoICMP, 64
	binary.BigEndian.PutUint16(v6[4:6], 8)
	v6[8], v6[23] = 0x20, 1
	v6[24], v6[39] = 0x20, 2
	v6[40] = 128
	if p, r := ParsePacket(v6, EtherTypeIPv6); r != DropInnerMalformed {
		t.Errorf("ICMPv4 in IPv6: %s (echo %v), want %s", r, p.Echo, DropInnerMalformed)
	}
}
