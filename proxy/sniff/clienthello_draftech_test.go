package sniff

import "testing"

// TestClientHelloDraftECH: a ClientHello that hides its real name with
// draft ESNI (encrypted_server_name, 0xffce) or an ECH draft's code point
// (0xff02, 0xfe08 to 0xfe0c) offers ECH as much as one with RFC 9849's
// 0xfe0d: ECH is reported, so that `ech: deny` refuses it (TLS and QUIC
// both read their ClientHello here) and the record says ech; the SNI is
// still the outer name. Neighbouring code points are not ECH. (found by
// review r1bypass F3)
func TestClientHelloDraftECH(t *testing.T) {
	for _, tc := range []struct {
		typ int
		ech bool
	}{
		{0xfe0d, true}, {0xffce, true}, {0xff02, true},
		{0xfe08, true}, {0xfe09, true}, {0xfe0a, true}, {0xfe0b, true}, {0xfe0c, true},
		{0xfe07, false}, {0xfe0e, false}, {0xff01, false}, {0xff03, false}, {0xffcd, false}, {0xffcf, false},
	} {
		h, err := ParseClientHello(record(helloBody(sniExt(hostName("public.example")), ext(tc.typ, []byte{0, 1, 2}))))
		if err != nil || h.ECH != tc.ech || h.ServerName != "public.example" {
			t.Errorf("extension %#04x: ECH %v, SNI %q, %v; want ECH %v with the outer name", tc.typ, h.ECH, h.ServerName, err, tc.ech)
		}
	}
	// Draft ESNI clients sent no server_name at all.
	h, err := ParseClientHello(record(helloBody(ext(0xffce, []byte{0, 1, 2}))))
	if err != nil || !h.ECH || h.ServerName != "" {
		t.Errorf("ESNI alone: ECH %v, SNI %q, %v; want ECH with no name", h.ECH, h.ServerName, err)
	}
}
