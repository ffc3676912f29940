package capture

import (
	"encoding/binary"
	"testing"
	"time"
)

// TestPcapBlockOptionsWhateverThePacketLength: an enhanced packet block's
// options start where the pcapng spec says, after the packet padded to 32
// bits, whatever the packet's length mod 4, so that readers find the
// direction flags and the flow cookie (and, for synthesized packets, the
// second comment). A 4-byte-aligned packet padded with 4 more bytes would
// lose them silently: tshark takes the pad for opt_endofopt and reports
// nothing malformed. The original length is the captured one: the packet
// is not cut short.
func TestPcapBlockOptionsWhateverThePacketLength(t *testing.T) {
	le := binary.LittleEndian
	for _, plain := range []bool{false, true} {
		for n := 60; n < 64; n++ {
			s := &slot{cookie: 0x8c1f03aa, out: true, plain: plain, ts: 1, buf: make([]byte, n), n: n}
			b := appendEPB(nil, 3, s)
			total := int(le.Uint32(b[4:]))
			if total != len(b) || int(le.Uint32(b[len(b)-4:])) != total {
				t.Fatalf("len %d: block length %d, %d bytes, trailer %d", n, total, len(b), le.Uint32(b[len(b)-4:]))
			}
			caplen := int(le.Uint32(b[20:]))
			if orig := int(le.Uint32(b[24:])); caplen != n || orig != n {
				t.Errorf("packet of %d bytes written with captured length %d, original length %d: a reader takes it for cut short", n, caplen, orig)
			}
			off := 28 + (caplen+3)&^3
			var flags uint32
			var comments []string
			for off+4 <= total-4 {
				code, olen := le.Uint16(b[off:]), int(le.Uint16(b[off+2:]))
				if code == optEndOfOpt {
					break
				}
				v := b[off+4 : off+4+olen]
				switch code {
				case optEPBFlags:
					flags = le.Uint32(v)
				case optComment:
					comments = append(comments, string(v))
				}
				off += 4 + (olen+3)&^3
			}
			want := 1
			if plain {
				want = 2
			}
			if flags != epbOutbound || len(comments) != want || comments[0] != "flow_cookie=0x8c1f03aa" {
				t.Errorf("plain %v, packet of %d bytes: a reader finds flags %d, comments %q", plain, n, flags, comments)
			}
		}
	}
}

// TestPcapFileReadableWhenIdle: docs/ids.md: "the one being written is
// readable too, up to the moment the writer last caught up, which it does
// each time its queue runs empty". One packet, then quiet: the file holds
// it well before any rotation, so an auditor or a replaying IDS sees a
// quiet appliance's last minutes.
func TestPcapFileReadableWhenIdle(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{PcapDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pkt := tcpPacket(t, client, dest, []byte("GET / HTTP/1.1\r\n\r\n"))
	c.Packet(epA, 1, false, time.Now().UnixNano(), parsed(t, pkt), pkt)
	// Well before any rotation: waitFor's 10 s, against the default
	// --pcap-rotate-age of minutes and a 256 KiB buffer.
	waitFor(t, "the file being written to hold the packet", func() bool {
		files := pcapFiles(t, dir)
		if len(files) != 1 {
			return false
		}
		n, err := countPcapngPackets(files[0]) // an error while the file is still empty
		return err == nil && n == 1
	})
}
