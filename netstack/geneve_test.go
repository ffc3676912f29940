package netstack

import (
	"bytes"
	"testing"
)

// innerV4 is a SYN from testClient to testDest: a loopback destination, as
// it had, is dropped before the flow table without AllowLoopback
// (inner_bad_destination), and the benchmarks would measure that drop.
var innerV4 = []byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 5, 198, 18, 9, 9,
	0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}

func TestParseHeaderRoundTrip(t *testing.T) {
	extra := []byte{0x01, 0x02, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef}
	hdr := AppendHeader(nil, EtherTypeIPv4, 0xabcdef, 0x0123456789abcdef, 0x1122334455667788, 0xcafef00d, extra)
	if len(hdr) != AWSGeneveHeader+len(extra) {
		t.Fatalf("header is %d bytes, want %d", len(hdr), AWSGeneveHeader+len(extra))
	}
	h, r := ParseHeader(append(hdr, innerV4...))
	if r != DropNone {
		t.Fatalf("drop %s", r)
	}
	want := Header{Len: len(hdr), Protocol: EtherTypeIPv4, VNI: 0xabcdef, Endpoint: 0x0123456789abcdef, Attachment: 0x1122334455667788, FlowCookie: 0xcafef00d}
	if h != want {
		t.Fatalf("parsed %+v, want %+v", h, want)
	}
}

func TestParseHeaderDrops(t *testing.T) {
	good := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
	mod := func(f func(b []byte) []byte) []byte { return f(append(append([]byte{}, good...), innerV4...)) }
	cases := []struct {
		name string
		pkt  []byte
		want DropReason
	}{
		{"empty", nil, DropTruncated},
		{"short", good[:7], DropTruncated},
		{"header only", good, DropTruncated},
		{"options past the end", good[:20], DropTruncated},
		{"version 1", mod(func(b []byte) []byte { b[0] |= 0x40; return b }), DropVersion},
		{"control packet", mod(func(b []byte) []byte { b[1] |= 0x80; return b }), DropControl},
		{"ethernet payload", mod(func(b []byte) []byte { b[2], b[3] = 0x65, 0x58; return b }), DropProtocol},
		{"option overruns header", mod(func(b []byte) []byte { b[11] = 0x1f; return b }), DropOptionLength},
		{"cookie of 8 bytes", mod(func(b []byte) []byte { b[35] = 2; return b }), DropOptionLength},
		// RFC 8926 §3.5: an unknown option marked critical drops the
		// packet, with or without the C bit (critical options present).
		{"unknown critical option", mod(func(b []byte) []byte {
			return withOption(b, []byte{0x01, 0x01, 0x85, 1, 0xde, 0xad, 0xbe, 0xef})
		}), DropCriticalOption},
		{"unknown critical option, C bit", mod(func(b []byte) []byte {
			b = withOption(b, []byte{0x01, 0x01, 0x85, 1, 0xde, 0xad, 0xbe, 0xef})
			b[1] |= 0x40
			return b
		}), DropCriticalOption},
		{"AWS endpoint type marked critical", mod(func(b []byte) []byte {
			return withOption(b, []byte{0x01, 0x08, 0x80 | AWSOptionEndpoint, 2, 0, 0, 0, 0, 0, 0, 0, 0x99})
		}), DropCriticalOption},
		{"no options", append([]byte{0, 0, 0x08, 0, 0, 0, 0, 0}, innerV4...), DropMissingOption},
		{"cookie missing", append(AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)[:0:0], func() []byte {
			b := AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil)
			b[32+2] = 9 // the cookie option becomes an unknown AWS type
			return append(b, innerV4...)
		}()...), DropMissingOption},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, r := ParseHeader(c.pkt); r != c.want {
				t.Fatalf("drop %s, want %s", r, c.want)
			}
		})
	}
}

// withOption inserts the encoded option opt after the options of the
// GENEVE datagram b, growing the header's length.
func withOption(b, opt []byte) []byte {
	hl := genevebase + int(b[0]&0x3f)*4
	out := append(append(append([]byte{}, b[:hl]...), opt...), b[hl:]...)
	out[0] += byte(len(opt) / 4)
	return out
}

// Options the appliance does not know but need not understand (the
// critical bit clear) are skipped, and the C bit alone, with no critical
// option in the header, drops nothing.
func TestParseHeaderSkipsUnknownOptions(t *testing.T) {
	pkt := append(AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil), innerV4...)
	pkt = withOption(pkt, []byte{0x01, 0x01, 0x7f, 1, 0xde, 0xad, 0xbe, 0xef})
	pkt = withOption(pkt, []byte{0x01, 0x08, 0x09, 0}) // an AWS type it does not know
	pkt[1] |= 0x40
	h, r := ParseHeader(pkt)
	if r != DropNone || h.Len != AWSGeneveHeader+12 || h.Endpoint != 1 || h.Attachment != 2 || h.FlowCookie != 3 {
		t.Fatalf("parsed %+v (%s), want the AWS options and a %d-byte header", h, r, AWSGeneveHeader+12)
	}
}

func TestParseHeaderAllocatesNothing(t *testing.T) {
	pkt := append(AppendHeader(nil, EtherTypeIPv4, 0, 1, 2, 3, nil), innerV4...)
	if n := testing.AllocsPerRun(100, func() { ParseHeader(pkt) }); n != 0 {
		t.Fatalf("ParseHeader allocates %v times per packet", n)
	}
}

// FuzzParseHeader: no input panics; an accepted header lies within the
// datagram, and rebuilding it from its fields parses to the same fields.
func FuzzParseHeader(f *testing.F) {
	f.Add(append(AppendHeader(nil, EtherTypeIPv4, 7, 1, 2, 3, nil), innerV4...))
	f.Add(append(AppendHeader(nil, EtherTypeIPv6, 0, 1, 2, 3, []byte{0, 1, 2, 0}), innerV4...))
	f.Add([]byte{0, 0, 0x08, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, r := ParseHeader(b)
		if r != DropNone {
			return
		}
		if h.Len < 8 || h.Len >= len(b) || h.Len > MaxGeneveHeader {
			t.Fatalf("accepted header length %d for %d bytes", h.Len, len(b))
		}
		again := AppendHeader(nil, h.Protocol, h.VNI, h.Endpoint, h.Attachment, h.FlowCookie, nil)
		h2, r2 := ParseHeader(append(again, b[h.Len:]...))
		h2.Len = h.Len
		if r2 != DropNone || h2 != h {
			t.Fatalf("rebuilt header parses to %+v (%s), want %+v", h2, r2, h)
		}
		if !bytes.Equal(b[:8][2:4], again[2:4]) {
			t.Fatalf("protocol type changed")
		}
	})
}
