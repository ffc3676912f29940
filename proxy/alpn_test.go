package proxy

import (
	"crypto/tls"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// alpnParse reads a record's alpn back into the offer: split on commas,
// then \DDD decoded.
func alpnParse(t *testing.T, s string) []string {
	t.Helper()
	if s == "" {
		return nil
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		var b strings.Builder
		for i := 0; i < len(f); i++ {
			if f[i] != '\\' {
				b.WriteByte(f[i])
				continue
			}
			if i+4 > len(f) {
				t.Fatalf("%q: a cut escape", s)
			}
			n, err := strconv.Atoi(f[i+1 : i+4])
			if err != nil || n > 255 {
				t.Fatalf("%q: escape %q", s, f[i:i+4])
			}
			b.WriteByte(byte(n))
			i += 3
		}
		out = append(out, b.String())
	}
	return out
}

// An ALPN protocol name may hold any byte, a comma too: the record's alpn
// writes a comma, a backslash or a byte outside printable ASCII inside a
// name as \DDD (\044, \092), so that each offer reads back as itself.
func TestALPNList(t *testing.T) {
	for _, tc := range []struct {
		offer []string
		want  string
	}{
		{nil, ""},
		{[]string{"h2", "http/1.1"}, "h2,http/1.1"},
		{[]string{"h2,http/1.1"}, `h2\044http/1.1`},
		{[]string{"imap,h2", "http/1.1"}, `imap\044h2,http/1.1`},
		{[]string{`a\b`, "c"}, `a\092b,c`},
		{[]string{`\044`}, `\092044`},
		{[]string{","}, `\044`},
		// Bytes outside printable ASCII: "h2\xff" and "h2\xfe" were both
		// U+FFFD once in JSON (review r5s28 F3).
		{[]string{"h2\xff", "h2\xfe"}, `h2\255,h2\254`},
		{[]string{"a b", "\x00\x7f"}, `a\032b,\000\127`},
	} {
		got := alpnList(tc.offer)
		if got != tc.want {
			t.Errorf("%q: %q, want %q", tc.offer, got, tc.want)
		}
		if back := alpnParse(t, got); !slices.Equal(back, tc.offer) {
			t.Errorf("%q reads back as %q", got, back)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte{',', '\\', '0', '4', 'a', ' ', 0x00, 0x7f, 0xfe, 0xff}
	for range 2000 {
		offer := make([]string, 1+rng.IntN(4))
		for i := range offer {
			b := make([]byte, 1+rng.IntN(6))
			for j := range b {
				b[j] = alphabet[rng.IntN(len(alphabet))]
			}
			offer[i] = string(b)
		}
		got := alpnList(offer)
		if back := alpnParse(t, got); !slices.Equal(back, offer) {
			t.Fatalf("%q: written %q, reads back as %q", offer, got, back)
		}
		for i := 0; i < len(got); i++ {
			if got[i] < '!' || got[i] > '~' {
				t.Fatalf("%q: written %q, with byte %#x, which JSON may not keep", offer, got, got[i])
			}
		}
	}
}

// A TLS record's alpn tells an offer of one name holding a comma from an
// offer of two names; both used to be "h2,http/1.1".
func TestTLSRecordALPNEscaped(t *testing.T) {
	r := newClsRig(t, clsDenyByName, clsOptions{})
	for _, tc := range []struct {
		offer []string
		want  string
	}{
		{[]string{"h2", "http/1.1"}, "h2,http/1.1"},
		{[]string{"h2,http/1.1"}, `h2\044http/1.1`},
		{[]string{"imap,h2", `x\y`}, `imap\044h2,x\092y`},
	} {
		c := r.dial(t, r.tlsDest)
		_, _ = clsHandshake(c, clsShape{version: 0x0301}, &tls.Config{ServerName: "denied.example", NextProtos: tc.offer, RootCAs: r.upRoots})
		rec := r.record(t, c, "tls")
		c.Close()
		if rec.ALPN != tc.want || rec.Action != "deny" {
			t.Errorf("offer %q: record alpn %q action %s, want alpn %q, denied", tc.offer, rec.ALPN, rec.Action, tc.want)
		}
	}
}

// QUIC records write the offer the same way.
func TestQUICRecordALPNEscaped(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	flight := quicFirstFlightWith(t, &tls.Config{ServerName: "blocked.example.test", NextProtos: []string{"h3,h2", `x\y`}})
	startFlow(p, quicClient, dst.addr(), flight...)
	got := recs.records(t, 1)[0]
	if got.Kind != "quic" || got.Action != "deny" || got.ALPN != `h3\044h2,x\092y` {
		t.Fatalf("record %+v, want alpn %q", got, `h3\044h2,x\092y`)
	}
}
