package netstack

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// pathMTUError is a "fragmentation needed" (IPv4) or Packet Too Big (IPv6)
// from from to the quoted packet's source, naming mtu.
func pathMTUError(from netip.Addr, quoted []byte, mtu uint32) []byte {
	if from.Is4() {
		return icmpErrorAbout(from, quoted, 3, 4, mtu)
	}
	return icmpErrorAbout(from, quoted, 2, 0, mtu)
}

// icmpErrorAbout is an ICMP (from an IPv4 address) or ICMPv6 error of type
// typ and code from from to the quoted packet's source, with rest in its
// second 32-bit word (the MTU of an IPv4 "fragmentation needed" or an IPv6
// Packet Too Big), quoting the first 28 bytes (IPv4) or all of quoted.
func icmpErrorAbout(from netip.Addr, quoted []byte, typ, code uint8, rest uint32) []byte {
	ipLen, proto := 40, uint8(protoICMPv6)
	if from.Is4() {
		ipLen, proto, quoted = 20, protoICMP, quoted[:28]
	}
	pkt := make([]byte, ipLen+8+len(quoted))
	icmp := pkt[ipLen:]
	icmp[0], icmp[1] = typ, code
	binary.BigEndian.PutUint32(icmp[4:], rest)
	copy(icmp[8:], quoted)
	if from.Is4() {
		pkt[0], pkt[8], pkt[9] = 0x45, 64, proto
		binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
		f := from.As4()
		copy(pkt[12:16], f[:])
		copy(pkt[16:20], quoted[12:16]) // to the quoted packet's source
		binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, 0))
		return ipv4Sum(pkt)
	}
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(icmp)))
	pkt[6], pkt[7] = proto, 64
	f := from.As16()
	copy(pkt[8:24], f[:])
	copy(pkt[24:40], quoted[8:24]) // to the quoted packet's source
	var tail [8]byte
	binary.BigEndian.PutUint32(tail[:4], uint32(len(icmp)))
	tail[7] = proto
	sum := checksum.Checksum(pkt[8:40], 0)
	sum = checksum.Checksum(tail[:], sum)
	binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, sum))
	return pkt
}

// firstSegmentSize has the stack's end of the rig's connection write 4000
// bytes and returns the payload size of the first data segment it sends.
func firstSegmentSize(t *testing.T, r *groRig) int {
	t.Helper()
	if _, err := r.conn.Write(make([]byte, 4000)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, maxDatagram)
	r.gwlb.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		tcp, err := readReplyTCP(r.gwlb, buf)
		if err != nil {
			t.Fatalf("no data segment: %v", err)
		}
		if tcp != nil && len(tcp.Payload()) > 0 {
			return len(tcp.Payload())
		}
	}
}

// TestForgedPathMTUBelowTheFloor: a "fragmentation needed" or Packet Too
// Big naming a path MTU below 552 (IPv4) or 1280 (IPv6) is dropped and
// counted (icmp_mtu_too_small), whoever sends it. Another client behind
// the same endpoint sent one from its own address, quoting a made-up
// packet to a neighbour's connection, which the flow table found by the
// quoted addresses; gVisor took MTU 0 (or anything under 68) and cut the
// neighbour's segments to a byte, never to grow again (at 68, to 28
// bytes). That an error at the floor, as a router on the path sends it,
// still lowers the segments is TestPathMTUErrorQuotesSegmentInFlight's.
func TestForgedPathMTUBelowTheFloor(t *testing.T) {
	mss8960 := []byte{2, 4, 0x23, 0x00} // the client's SYN: segments up to 8960 bytes
	cases := []struct {
		fam  int // index into groFamilies
		from string
		mtu  uint32
	}{
		{0, "198.18.0.77", 0},
		{0, "198.18.0.77", 68},
		{0, "198.18.0.77", minPathMTUv4 - 1},
		{1, "2001:db8::77", 0},
		{1, "2001:db8::77", minPathMTUv6 - 1},
	}
	for _, c := range cases {
		fam := groFamilies[c.fam]
		t.Run(fmt.Sprintf("%s/%s/mtu%d", fam.name, c.from, c.mtu), func(t *testing.T) {
			r := newGRORigOpts(t, fam.client, fam.server, func(*Config) {}, mss8960, nil)
			// The stack's segment to the client the error claims to be
			// about; the sender does not know its sequence numbers.
			quoted := clientSegment(r.server, r.client, 0, 0, header.TCPFlagAck, nil)
			forged := pathMTUError(netip.MustParseAddr(c.from), quoted, c.mtu)
			// Under the sender's own GENEVE header: another flow's.
			d := append(AppendHeader(nil, r.ether, 0, 7, 0xbad, 0xbad, nil), forged...)
			r.s.handleDatagram(d, netip.MustParseAddrPort("127.0.0.2:47002"), nil)

			if n := r.s.Stats().Drops["icmp_error_without_flow"]; n != 0 {
				t.Fatalf("the error found no flow (%d): the test quotes the wrong packet", n)
			}
			if first := firstSegmentSize(t, r); first != 4000 {
				t.Errorf("the connection's first data segment after the error carries %d bytes, want 4000 (MSS untouched)", first)
			}
			if got := r.s.Stats().Drops["icmp_mtu_too_small"]; got != 1 {
				t.Errorf("icmp_mtu_too_small %d, want 1", got)
			}
		})
	}
}
