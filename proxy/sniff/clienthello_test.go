package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseClientHelloReal(t *testing.T) {
	for _, tc := range helloCases() {
		t.Run(tc.name, func(t *testing.T) {
			raw := captureHello(t, tc.cfg)
			h, err := ParseClientHello(raw)
			if err != nil {
				t.Fatalf("ParseClientHello: %v", err)
			}
			if h.ServerName != tc.wantSNI {
				t.Errorf("ServerName = %q, want %q", h.ServerName, tc.wantSNI)
			}
			if !slices.Equal(h.ALPN, tc.wantALPN) {
				t.Errorf("ALPN = %.60q, want %.60q", h.ALPN, tc.wantALPN)
			}
			if got := h.MaxVersion(); got != tc.wantMax {
				t.Errorf("MaxVersion = %#04x, want %#04x", got, tc.wantMax)
			}
			if (h.SupportedVersions != nil) != tc.wantSV {
				t.Errorf("SupportedVersions = %x, want present=%v", h.SupportedVersions, tc.wantSV)
			}
			if h.LegacyVersion != tls.VersionTLS12 {
				t.Errorf("LegacyVersion = %#04x, want 0x0303", h.LegacyVersion)
			}
			if h.Size != len(raw) {
				t.Errorf("Size = %d, want %d", h.Size, len(raw))
			}
			if recs := countRecords(raw); recs < tc.minRecords {
				t.Errorf("capture has %d records, the case needs at least %d", recs, tc.minRecords)
			}
			// Bytes after the hello (the client's next records) are ignored.
			h2, err := ParseClientHello(append(slices.Clip(raw), 0x14, 0x03, 0x03, 0x00, 0x01, 0x01))
			if err != nil || h2.ServerName != h.ServerName || h2.Size != h.Size {
				t.Errorf("with trailing bytes: %+v, %v", h2, err)
			}
		})
	}
}

func TestClientHelloPostQuantumSize(t *testing.T) {
	// The BufferSize doc relies on PQ hellos being small; check the claim.
	raw := captureHello(t, &tls.Config{ServerName: "pq.example", CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}})
	if len(raw) < 1000 || len(raw) > BufferSize {
		t.Fatalf("PQ ClientHello is %d bytes", len(raw))
	}
	t.Logf("ClientHello with X25519MLKEM768: %d bytes", len(raw))
}

func countRecords(b []byte) int {
	n := 0
	for p := 0; p+5 <= len(b); n++ {
		p += 5 + (int(b[p+3])<<8 | int(b[p+4]))
	}
	return n
}

// Every proper prefix of a real hello asks for more bytes, never more than
// the whole, and exactly the whole when the record header says so.
func TestParseClientHelloTruncated(t *testing.T) {
	for _, tc := range helloCases() {
		raw := captureHello(t, tc.cfg)
		single := countRecords(raw) == 1
		for k := range len(raw) {
			_, err := ParseClientHello(raw[:k])
			var nm *NeedMoreError
			if !errors.As(err, &nm) || !errors.Is(err, ErrNeedMore) {
				t.Fatalf("%s: prefix %d/%d: err = %v, want NeedMoreError", tc.name, k, len(raw), err)
			}
			if nm.Need <= k || nm.Need > len(raw) {
				t.Fatalf("%s: prefix %d/%d: Need = %d", tc.name, k, len(raw), nm.Need)
			}
			if single && k >= 5 && nm.Need != len(raw) {
				t.Fatalf("%s: prefix %d/%d: Need = %d, want exact", tc.name, k, len(raw), nm.Need)
			}
		}
	}
}

// Fragmented into tiny records (splitting the handshake header itself), the
// same hello parses to the same result.
func TestParseClientHelloFragmented(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "frag.example", NextProtos: []string{"h2"}})
	want, err := ParseClientHello(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, sizes := range [][]int{{1}, {2, 2, 7}, {3, 1000}, {100}, {len(raw)}} {
		frag := refragment(t, raw, sizes...)
		got, err := ParseClientHello(frag)
		if err != nil {
			t.Fatalf("sizes %v: %v", sizes, err)
		}
		if got.ServerName != want.ServerName || !slices.Equal(got.ALPN, want.ALPN) ||
			!slices.Equal(got.SupportedVersions, want.SupportedVersions) || got.Size != len(frag) {
			t.Fatalf("sizes %v: got %+v, want %+v", sizes, got, want)
		}
		for k := range len(frag) {
			if _, err := ParseClientHello(frag[:k]); !errors.Is(err, ErrNeedMore) {
				t.Fatalf("sizes %v: prefix %d: %v", sizes, k, err)
			}
		}
	}
	// A warning alert between the fragments: crypto/tls drops it and reads
	// on (its TLS 1.3 rule against interleaving applies only once the
	// version is known), so the hello is the same.
	frag := refragment(t, raw, 10)
	mixed := append(append(slices.Clone(frag[:15]), warningAlert...), frag[15:]...)
	got, err := ParseClientHello(mixed)
	if err != nil || got.ServerName != want.ServerName || got.Size != len(mixed) {
		t.Fatalf("interleaved alert: %+v, %v", got, err)
	}
	// A record of a type that is not TLS's cannot be.
	bad := append(append(slices.Clone(frag[:15]), 0x18, 0x03, 0x03, 0x00, 0x01, 0x01), frag[15:]...)
	if _, err := ParseClientHello(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("interleaved record of type 0x18: %v", err)
	}
}

// warningAlert is a warning-level alert record (user_canceled), which
// crypto/tls drops when it comes before the version is known.
var warningAlert = []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 90}

// withRecordVersion rewrites the version of every record in hello.
func withRecordVersion(hello []byte, v uint16) []byte {
	out := slices.Clone(hello)
	for p := 0; p+5 <= len(out); p += 5 + (int(out[p+3])<<8 | int(out[p+4])) {
		out[p+1], out[p+2] = byte(v>>8), byte(v)
	}
	return out
}

// TestParseClientHelloEvasions: what crypto/tls and OpenSSL servers accept
// before or around a ClientHello, a hostile client can send to hide it from
// a stricter classifier. Every one of them is read with its SNI.
func TestParseClientHelloEvasions(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "hidden.example", NextProtos: []string{"h2"}})
	empty := []byte{0x16, 0x03, 0x01, 0x00, 0x00}
	ccs := []byte{0x14, 0x03, 0x03, 0x00, 0x01, 0x01}
	appData := []byte{0x17, 0x03, 0x03, 0x00, 0x03, 1, 2, 3}
	cases := map[string][]byte{
		"record version 0x0000":     withRecordVersion(raw, 0x0000),
		"record version 0x0300":     withRecordVersion(raw, 0x0300),
		"record version 0x0304":     withRecordVersion(raw, 0x0304),
		"record version 0x0305":     withRecordVersion(raw, 0x0305),
		"record version 0x0fff":     withRecordVersion(raw, 0x0fff),
		"record version 0xffff":     withRecordVersion(raw, 0xffff),
		"warning alert first":       slices.Concat(warningAlert, raw),
		"16 warning alerts first":   slices.Concat(bytes.Repeat(warningAlert, 16), raw),
		"empty handshake record":    slices.Concat(empty, raw),
		"change_cipher_spec first":  slices.Concat(ccs, raw),
		"application data first":    slices.Concat(appData, raw),
		"alert then fragments":      slices.Concat(warningAlert, withRecordVersion(refragment(t, raw, 1, 7, 300), 0x0000)),
		"32 useless records":        slices.Concat(bytes.Repeat(empty, 16), bytes.Repeat(warningAlert, 16), raw),
		"fragments, alerts between": slices.Concat(refragment(t, raw, 20)[:25], warningAlert, warningAlert, refragment(t, raw, 20)[25:]),
	}
	for name, in := range cases {
		h, err := ParseClientHello(in)
		if err != nil || h.ServerName != "hidden.example" || !slices.Equal(h.ALPN, []string{"h2"}) || h.Size != len(in) {
			t.Errorf("%s: %+v, %v", name, h, err)
			continue
		}
		for k := range len(in) {
			if _, err := ParseClientHello(in[:k]); !errors.Is(err, ErrNeedMore) {
				t.Fatalf("%s: prefix %d: %v", name, k, err)
			}
		}
	}
	if h, _ := ParseClientHello(cases["record version 0x0305"]); h.RecordVersion != 0x0305 {
		t.Errorf("RecordVersion = %#04x", h.RecordVersion)
	}
	// Beyond the bound, it is TLS-like but not read: the caller fails closed.
	if _, err := ParseClientHello(slices.Concat(bytes.Repeat(warningAlert, maxUselessRecords+1), raw)); !errors.Is(err, ErrMalformed) {
		t.Errorf("%d alerts first: %v", maxUselessRecords+1, err)
	}
}

// Flipping any single byte of a real hello never panics and yields one of
// the three documented errors or a result.
func TestParseClientHelloMutated(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "m.example", NextProtos: []string{"h2", "http/1.1"}})
	for i := range raw {
		for _, v := range []byte{0x00, 0x01, 0x7f, 0xff, raw[i] ^ 0x80} {
			b := slices.Clone(raw)
			b[i] = v
			if _, err := ParseClientHello(b); err != nil && !knownError(err) {
				t.Fatalf("byte %d = %#x: unexpected error %v", i, v, err)
			}
		}
	}
}

func knownError(err error) bool {
	n := 0
	for _, e := range []error{ErrNeedMore, ErrNotTLS, ErrMalformed} {
		if errors.Is(err, e) {
			n++
		}
	}
	return n == 1
}

// Builders for synthetic hellos.

func u16(n int) []byte { return []byte{byte(n >> 8), byte(n)} }

func vec16(parts ...[]byte) []byte {
	c := bytes.Join(parts, nil)
	return append(u16(len(c)), c...)
}

func vec8(parts ...[]byte) []byte {
	c := bytes.Join(parts, nil)
	return append([]byte{byte(len(c))}, c...)
}

func ext(typ int, data ...[]byte) []byte { return append(u16(typ), vec16(data...)...) }

func hostName(name string) []byte { return append([]byte{0}, vec16([]byte(name))...) }

func sniExt(entries ...[]byte) []byte { return ext(extServerName, vec16(entries...)) }

func alpnExt(names ...string) []byte {
	var parts [][]byte
	for _, n := range names {
		parts = append(parts, vec8([]byte(n)))
	}
	return ext(extALPN, vec16(parts...))
}

// helloBody is a minimal TLS 1.2-style ClientHello body with the extensions.
func helloBody(exts ...[]byte) []byte {
	b := []byte{0x03, 0x03}
	b = append(b, make([]byte, 32)...)          // random
	b = append(b, vec8(make([]byte, 32))...)    // session id
	b = append(b, vec16([]byte{0x13, 0x01})...) // cipher suites
	b = append(b, vec8([]byte{0})...)           // compression
	if exts != nil {
		b = append(b, vec16(exts...)...)
	}
	return b
}

// record wraps a ClientHello body in a handshake header and one record.
func record(body []byte) []byte {
	msg := append([]byte{handshakeTypeClientHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{0x16, 0x03, 0x01, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

func TestParseClientHelloSynthetic(t *testing.T) {
	ok := func(sni string, alpn ...string) func(*testing.T, ClientHello, error) {
		return func(t *testing.T, h ClientHello, err error) {
			if err != nil || h.ServerName != sni || !slices.Equal(h.ALPN, alpn) {
				t.Errorf("got %+v, %v; want SNI %q ALPN %q", h, err, sni, alpn)
			}
		}
	}
	is := func(want error) func(*testing.T, ClientHello, error) {
		return func(t *testing.T, h ClientHello, err error) {
			if !errors.Is(err, want) || !knownError(err) {
				t.Errorf("got %+v, %v; want %v", h, err, want)
			}
		}
	}
	withType := func(b []byte, typ byte) []byte { b = slices.Clone(b); b[5] = typ; return b }
	withRecLen := func(b []byte, n int) []byte { b = slices.Clone(b); b[3], b[4] = byte(n>>8), byte(n); return b }
	withRecVersion := func(b []byte, v uint16) []byte { b = slices.Clone(b); b[1], b[2] = byte(v>>8), byte(v); return b }
	base := record(helloBody(sniExt(hostName("a.example"))))
	huge := slices.Clone(base)
	huge[6], huge[7], huge[8] = 0x01, 0x00, 0x01 // body length 65537

	tests := []struct {
		name  string
		in    []byte
		check func(*testing.T, ClientHello, error)
	}{
		{"sni", base, ok("a.example")},
		{"no extensions", record(helloBody()), ok("")},
		{"empty extension block", record(helloBody([]byte{})), ok("")},
		{"sni trailing dot kept", record(helloBody(sniExt(hostName("a.example.")))), ok("a.example.")},
		{"unknown name type skipped", record(helloBody(sniExt(append([]byte{1}, vec16([]byte("x"))...), hostName("b.example")))), ok("b.example")},
		{"alpn", record(helloBody(alpnExt("h2", "http/1.1"))), ok("", "h2", "http/1.1")},
		{"ech outer", record(helloBody(sniExt(hostName("public.example")), ext(extECH, []byte{0, 1, 2}))), func(t *testing.T, h ClientHello, err error) {
			if err != nil || !h.ECH || h.ServerName != "public.example" {
				t.Errorf("got %+v, %v; want ECH with the outer name", h, err)
			}
		}},
		{"not tls: http", []byte("GET / HTTP/1.1\r\n"), is(ErrNotTLS)},
		{"not tls: type 0x13", []byte{0x13, 0x03, 0x01, 0, 1}, is(ErrNotTLS)},
		{"not tls: type 0x18", []byte{0x18, 0x03, 0x01, 0, 1}, is(ErrNotTLS)},
		{"not tls: sslv2 hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, is(ErrNotTLS)},
		{"any version: 2", []byte{0x16, 0x02}, is(ErrNeedMore)},
		{"any version: 3.5", []byte{0x16, 0x03, 0x05, 0, 1}, is(ErrNeedMore)},
		{"any version: 3.5, whole", withRecVersion(base, 0x0305), ok("a.example")},
		{"alert first, alone", []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00}, is(ErrNeedMore)},
		{"record type 0x18 after an alert", []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00, 0x18}, is(ErrMalformed)},
		{"need: empty", nil, is(ErrNeedMore)},
		{"need: one byte", []byte{0x16}, is(ErrNeedMore)},
		{"server hello", withType(base, 2), is(ErrMalformed)},
		{"server hello, first byte only", withType(base, 2)[:6], is(ErrMalformed)},
		{"zero-length record skipped", withRecLen(base, 0)[:5], is(ErrNeedMore)},
		{"record over 2^14", withRecLen(base, maxPlaintext+1)[:5], is(ErrMalformed)},
		{"hello over limit, header only", huge[:9], is(ErrMalformed)},
		{"record shorter than message", withRecLen(base, len(base)-6), is(ErrMalformed)}, // its tail is no record header
		{"duplicate sni", record(helloBody(sniExt(hostName("a.example")), sniExt(hostName("b.example")))), is(ErrMalformed)},
		{"two host_names", record(helloBody(sniExt(hostName("a.example"), hostName("b.example")))), is(ErrMalformed)},
		{"empty host_name", record(helloBody(sniExt(hostName("")))), is(ErrMalformed)},
		{"NUL in host_name", record(helloBody(sniExt(hostName("a.example\x00.evil")))), is(ErrMalformed)},
		{"slash in host_name", record(helloBody(sniExt(hostName("a/b")))), is(ErrMalformed)},
		{"host_name with two trailing dots", record(helloBody(sniExt(hostName("bad.example..")))), is(ErrMalformed)},
		{"host_name with a leading dot", record(helloBody(sniExt(hostName(".evil.example")))), is(ErrMalformed)},
		{"host_name with an empty label", record(helloBody(sniExt(hostName("a..b")))), is(ErrMalformed)},
		{"host_name a lone dot", record(helloBody(sniExt(hostName(".")))), is(ErrMalformed)},
		{"host_name over 255", record(helloBody(sniExt(hostName(strings.Repeat("a", 256))))), is(ErrMalformed)},
		// RFC 1035's bounds, which the bump's leaf minter holds names to:
		// a longer name was sent upstream and then failed the mint.
		{"host_name label of 64", record(helloBody(sniExt(hostName(strings.Repeat("a", 64) + ".example")))), is(ErrMalformed)},
		{"host_name label of 63", record(helloBody(sniExt(hostName(strings.Repeat("a", 63) + ".example")))), ok(strings.Repeat("a", 63) + ".example")},
		{"host_name of 254", record(helloBody(sniExt(hostName(longName(254))))), is(ErrMalformed)},
		{"host_name of 253", record(helloBody(sniExt(hostName(longName(253))))), ok(longName(253))},
		{"host_name of 253 and a trailing dot", record(helloBody(sniExt(hostName(longName(253) + ".")))), ok(longName(253) + ".")},
		// Digits and dots alone: an IPv4 literal, or no name at all.
		{"host_name all digits", record(helloBody(sniExt(hostName("123")))), is(ErrMalformed)},
		{"host_name three numeric labels", record(helloBody(sniExt(hostName("1.2.3")))), is(ErrMalformed)},
		{"host_name IPv4 with a leading zero", record(helloBody(sniExt(hostName("01.2.3.4")))), is(ErrMalformed)},
		{"host_name IPv4 out of range", record(helloBody(sniExt(hostName("999.1.1.1")))), is(ErrMalformed)},
		{"host_name IPv4 with a trailing dot", record(helloBody(sniExt(hostName("1.2.3.4.")))), is(ErrMalformed)},
		{"host_name IPv4 literal", record(helloBody(sniExt(hostName("1.2.3.4")))), ok("1.2.3.4")},
		{"host_name numeric label, then a name", record(helloBody(sniExt(hostName("123.example")))), ok("123.example")},
		{"empty sni ext", record(helloBody(ext(extServerName))), is(ErrMalformed)},
		{"sni list overruns", record(helloBody(ext(extServerName, u16(50), hostName("a")))), is(ErrMalformed)},
		{"duplicate alpn", record(helloBody(alpnExt("h2"), alpnExt("h2"))), is(ErrMalformed)},
		{"empty alpn name", record(helloBody(alpnExt("h2", ""))), is(ErrMalformed)},
		{"empty alpn list", record(helloBody(ext(extALPN, u16(0)))), is(ErrMalformed)},
		{"odd supported_versions", record(helloBody(ext(extSupportedVersions, vec8([]byte{3, 4, 3})))), is(ErrMalformed)},
		{"truncated session id", record(append([]byte{3, 3}, append(make([]byte, 32), vec8(make([]byte, 33))...)...)[:50]), is(ErrMalformed)},
		{"truncated body", record([]byte{3, 3, 0}), is(ErrMalformed)},
		{"odd cipher_suites", record(slices.Concat([]byte{3, 3}, make([]byte, 32), vec8(), vec16([]byte{0x13}), vec8([]byte{0}))), is(ErrMalformed)},
		// What crypto/tls accepts, RFC 8446 notwithstanding, so must we.
		{"legacy version 2.0", record(append([]byte{2, 0}, helloBody()[2:]...)), ok("")},
		{"legacy version 0xffff", record(append([]byte{0xff, 0xff}, helloBody(sniExt(hostName("v.example")))[2:]...)), ok("v.example")},
		{"session id 255", record(slices.Concat([]byte{3, 3}, make([]byte, 32), vec8(make([]byte, 255)), vec16([]byte{0x13, 0x01}), vec8([]byte{0}), vec16(sniExt(hostName("s.example"))))), ok("s.example")},
		{"no cipher suites, no compression", record(slices.Concat([]byte{3, 3}, make([]byte, 32), vec8(), vec16(), vec8(), vec16(sniExt(hostName("c.example"))))), ok("c.example")},
		// What crypto/tls and OpenSSL refuse too.
		{"bytes after the sni list", record(helloBody(ext(extServerName, vec16(hostName("t.example")), []byte{0xde, 0xad}))), is(ErrMalformed)},
		{"bytes after the alpn list", record(helloBody(ext(extALPN, vec16(vec8([]byte("h2"))), []byte{0}))), is(ErrMalformed)},
		{"bytes after supported_versions", record(helloBody(ext(extSupportedVersions, vec8([]byte{3, 4}), []byte{9}))), is(ErrMalformed)},
		{"extension overruns", record(append(helloBody(), 0, 9, 0, 0)), is(ErrMalformed)},
		{"bytes after extensions", record(append(helloBody([]byte{}), 0)), is(ErrMalformed)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseClientHello(tc.in)
			tc.check(t, h, err)
		})
	}
}

func TestMaxVersionSkipsGREASE(t *testing.T) {
	h := ClientHello{LegacyVersion: 0x0303, SupportedVersions: []uint16{0xfafa, 0x0304, 0x0303}}
	if v := h.MaxVersion(); v != 0x0304 {
		t.Fatalf("MaxVersion = %#x", v)
	}
	h.SupportedVersions = []uint16{0x1a1a}
	if v := h.MaxVersion(); v != 0x0303 {
		t.Fatalf("MaxVersion with only GREASE = %#x", v)
	}
}

func BenchmarkParseClientHello(b *testing.B) {
	raw := captureHello(b, &tls.Config{ServerName: "bench.example", NextProtos: []string{"h2", "http/1.1"}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseClientHello(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func TestEmptyLabel(t *testing.T) {
	for name, want := range map[string]bool{
		"":               false,
		"example.com":    false,
		"example.com.":   false, // the root: one trailing dot is no empty label
		"a":              false,
		"1.2.3.4":        false,
		"::1":            false,
		".":              true,
		"..":             true,
		"bad.example..":  true,
		".evil.example":  true,
		"..evil.example": true,
		"a..b":           true,
		"a.b...":         true,
	} {
		if got := EmptyLabel(name); got != want {
			t.Errorf("EmptyLabel(%q) = %v, want %v", name, got, want)
		}
		if got := EmptyLabel([]byte(name)); got != want {
			t.Errorf("EmptyLabel([]byte(%q)) = %v, want %v", name, got, want)
		}
	}
}

// longName returns a host name of n bytes: labels of 63 "a"s and dots,
// the last label shortened to fit (n must not end on a dot: n%64 != 0).
func longName(n int) string {
	return strings.Repeat(strings.Repeat("a", 63)+".", n/64+1)[:n]
}

// TestInvalidHostNameQuotedShort: an invalid host_name is quoted in the
// error, which the connection's deny record keeps ("ClientHello could not
// be read: ..."), whole when it is short; a long one by its first and
// last 32 bytes and its length, for the name can be as long as the
// ClientHello (64 KiB), and quoted it made up to 256 KB of a record's
// error, outside any client's budget of text.
func TestInvalidHostNameQuotedShort(t *testing.T) {
	_, err := ParseClientHello(record(helloBody(sniExt(hostName("a b.example")))))
	if !errors.Is(err, ErrMalformed) || !strings.HasSuffix(err.Error(), `invalid host_name "a b.example"`) {
		t.Fatalf("short invalid name: %v", err)
	}
	long := "<" + strings.Repeat("x", 10000) + "\x01"
	_, err = ParseClientHello(record(helloBody(sniExt(hostName(long)))))
	want := `invalid host_name "<` + strings.Repeat("x", 31) + `"…"` + strings.Repeat("x", 31) + `\x01" (10002 bytes)`
	if !errors.Is(err, ErrMalformed) || !strings.HasSuffix(err.Error(), want) || len(err.Error()) > 200 {
		t.Fatalf("long invalid name: error of %d bytes %.200q, want it to end %q", len(err.Error()), err, want)
	}
}
