package capture

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// TestMirrorFramesFollowIPVersionAndDirection: the mirror's frames,
// written to a plain file in place of the TAP device (no privilege
// needed). The EtherType follows the IP version: IPv6 packets tagged as
// IPv4 would be decoded as garbage by Suricata, Zeek and tcpdump, every
// IPv6 flow hidden. The MAC addresses give the direction and mark
// synthesized packets, and the plaintext VLAN is the endpoint's + 2000.
func TestMirrorFramesFollowIPVersionAndDirection(t *testing.T) {
	name := filepath.Join(t.TempDir(), "frames")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	m := &mirror{name: "test", f: f, frame: make([]byte, frameHeader+largeSlot), vlans: map[uint64]vlanEntry{}, maxVLANs: MaxPlaintextVLANs}
	v4 := tcpPacket(t, client, dest, []byte("v4"))
	v6 := tcpPacket(t, netip.MustParseAddrPort("[2001:db8::5]:40001"), netip.MustParseAddrPort("[2001:db8:1::7]:443"), []byte("v6"))
	type want struct {
		pkt      []byte
		out      bool
		plain    bool
		dst, src [6]byte
		vlan     uint16
		et       uint16
	}
	cases := []want{
		{v4, false, false, destMAC, clientMAC, 1, 0x0800},
		{v6, false, false, destMAC, clientMAC, 1, 0x86dd},
		{v6, true, false, clientMAC, destMAC, 1, 0x86dd},
		{v6, false, true, plainDestMAC, plainClientMAC, 2001, 0x86dd},
		{v4, true, true, plainClientMAC, plainDestMAC, 2001, 0x0800},
	}
	for i, c := range cases {
		m.write(&slot{endpoint: epA, cookie: uint32(i), out: c.out, plain: c.plain, ts: int64(i + 1), buf: c.pkt, n: len(c.pkt)})
	}
	f.Close()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		n := frameHeader + len(c.pkt)
		if len(b) < n {
			t.Fatalf("frame %d: %d bytes left, want %d", i, len(b), n)
		}
		fr := b[:n]
		b = b[n:]
		if !bytes.Equal(fr[0:6], c.dst[:]) || !bytes.Equal(fr[6:12], c.src[:]) {
			t.Errorf("frame %d: MACs %x > %x, want %x > %x", i, fr[6:12], fr[0:6], c.src, c.dst)
		}
		if tpid, vid, et := binary.BigEndian.Uint16(fr[12:]), binary.BigEndian.Uint16(fr[14:]), binary.BigEndian.Uint16(fr[16:]); tpid != 0x8100 || vid != c.vlan || et != c.et {
			t.Errorf("frame %d: TPID %#04x VLAN %d EtherType %#04x, want 0x8100, %d, %#04x", i, tpid, vid, et, c.vlan, c.et)
		}
		if !bytes.Equal(fr[frameHeader:], c.pkt) {
			t.Errorf("frame %d: packet altered", i)
		}
	}
}
