package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
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
		got, cut := alpnList(tc.offer)
		if got != tc.want || cut {
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
		got, _ := alpnList(offer)
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

// hugeALPN is an offer of n names of 255 bytes, 0xff but the last: 5 bytes
// of JSON a byte written whole.
func hugeALPN(n int) []string {
	protos := make([]string, n)
	for i := range protos {
		protos[i] = strings.Repeat("\xff", 254) + string(rune('a'+i%26))
	}
	return protos
}

// checkALPNCut checks got, what alpnList wrote of offer: cut to alpnKeep
// bytes of JSON and the count of names, its ends the whole list's ends,
// no \DDD split.
func checkALPNCut(t *testing.T, offer []string, got string) {
	t.Helper()
	whole := strings.Join(offer, ",")
	plain := true
	for i := 0; i < len(whole); i++ {
		plain = plain && (plainALPNByte(whole[i]) || whole[i] == ',')
	}
	if !plain { // written \DDD: build the whole list as alpnList does, uncut
		var b strings.Builder
		for i, p := range offer {
			if i > 0 {
				b.WriteByte(',')
			}
			for j := 0; j < len(p); j++ {
				if c := p[j]; plainALPNByte(c) {
					b.WriteByte(c)
				} else {
					fmt.Fprintf(&b, "\\%03d", c)
				}
			}
		}
		whole = b.String()
	}
	if enc, _ := json.Marshal(whole); len(enc)-2 <= alpnKeep {
		t.Fatalf("%q: cut, written %q, though its %d bytes of JSON fit", offer, got, len(enc)-2)
	}
	note := fmt.Sprintf(" (%d names)", len(offer))
	list, ok := strings.CutSuffix(got, note)
	head, tail, marked := strings.Cut(list, records.CutMark)
	enc, _ := json.Marshal(list)
	switch {
	case !ok || !marked:
		t.Fatalf("%.80q…: written %.300q, want the list cut and %q", whole, got, note)
	case len(enc)-2 > alpnKeep || len(enc)-2 < alpnKeep-12:
		t.Fatalf("written %q: %d bytes of JSON, want at most %d, and near it", got, len(enc)-2, alpnKeep)
	case !strings.HasPrefix(whole, head) || !strings.HasSuffix(whole, tail):
		t.Fatalf("written %q: not the start and end of %.200q…", got, whole)
	}
	// Each end reads back as whole \DDD escapes.
	for _, end := range []string{head, tail} {
		for i := 0; i < len(end); i++ {
			if end[i] == '\\' {
				if i+4 > len(end) {
					t.Fatalf("written %q: an escape cut at its end %q", got, end)
				}
				if _, err := strconv.Atoi(end[i+1 : i+4]); err != nil {
					t.Fatalf("written %q: an escape cut in %q", got, end)
				}
				i += 3
			} else if end[i] < '!' || end[i] > '~' {
				t.Fatalf("written %q: byte %#x", got, end[i])
			}
		}
	}
	// The tail starts at a byte of its own, not inside an escape.
	if i := len(whole) - len(tail); strings.LastIndexByte(whole[max(0, i-3):i], '\\') >= 0 {
		t.Fatalf("written %q: its tail starts inside an escape", got)
	}
}

// An offer is client text: a ClientHello's 13.8 KB of ALPN names, each
// byte 0xff, wrote 69 KB of alpn, outside every budget (review rev31c
// F2). Past alpnKeep bytes of JSON it is cut, keeping both ends, whole
// escapes, and the number of names; an offer that fits is written whole.
func TestALPNListCut(t *testing.T) {
	long := make([]string, 40)
	for i := range long {
		long[i] = "proto-" + strconv.Itoa(i)
	}
	fits := []string{"h2", "h2-16", "h2-15", "h2-14", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1", "http/1.0"}
	if got, cut := alpnList(fits); cut || got != strings.Join(fits, ",") {
		t.Errorf("%q: %q, cut %v, want it whole", fits, got, cut)
	}
	for _, offer := range [][]string{hugeALPN(54), hugeALPN(1), long, {strings.Repeat("<", 300)}} {
		got, cut := alpnList(offer)
		if !cut {
			t.Errorf("%.60q…: not cut: %d bytes", offer, len(got))
			continue
		}
		checkALPNCut(t, offer, got)
	}
	// Every place of the cut among escapes and plain bytes.
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte{',', '\\', 'a', 'b', '<', 0x00, 0xff}
	for range 2000 {
		offer := make([]string, 1+rng.IntN(8))
		for i := range offer {
			b := make([]byte, 1+rng.IntN(60))
			for j := range b {
				b[j] = alphabet[rng.IntN(len(alphabet))]
			}
			offer[i] = string(b)
		}
		got, cut := alpnList(offer)
		if !cut {
			if back := alpnParse(t, got); !slices.Equal(back, offer) {
				t.Fatalf("%q: written %q, reads back as %q", offer, got, back)
			}
			continue
		}
		checkALPNCut(t, offer, got)
	}
}

// A tls record's alpn is cut and the record marked truncated, spliced and
// denied alike; a bumped connection's records carry the protocol
// negotiated instead, and are not marked for the offer they no longer hold.
func TestTLSRecordALPNBounded(t *testing.T) {
	doc := `
policy:
  default: allow
  destination_check: off
  rules:
    - name: no-denied
      domains: [denied.example]
      action: deny
    - name: look
      domains: [ok.example]
      action: bump
`
	r := newClsRig(t, doc, clsOptions{bump: true})
	offer := append(hugeALPN(54), "http/1.1")
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Certificate())
	for _, name := range []string{"allowed.example", "denied.example"} {
		c := r.dial(t, r.tlsDest)
		_ = tls.Client(c, &tls.Config{ServerName: name, NextProtos: offer, RootCAs: r.upRoots}).Handshake()
		c.Close()
		rec := r.record(t, c, "tls")
		line, _ := json.Marshal(rec)
		if !rec.Truncated || len(line) > 1024 {
			t.Errorf("%s: a record of %d bytes, truncated %v, from a ClientHello of 14 KB of ALPN: %.300s", name, len(line), rec.Truncated, line)
		}
		checkALPNCut(t, offer, rec.ALPN)
	}

	c := r.dial(t, r.tlsDest)
	tc := tls.Client(c, &tls.Config{ServerName: "ok.example", NextProtos: offer, RootCAs: roots})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("bumped handshake: %v", err)
	}
	req := clsMust(http.NewRequest(http.MethodGet, "https://ok.example/", nil))(t)
	if err := req.Write(tc); err != nil {
		t.Fatal(err)
	}
	resp := clsMust(http.ReadResponse(bufio.NewReader(tc), req))(t)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	tc.Close()
	for _, kind := range []string{"http", "tls"} {
		if rec := r.record(t, c, kind); rec.Action != "bump" || rec.ALPN != "http/1.1" || rec.Truncated {
			t.Errorf("bumped connection's %s record: action %s, alpn %q, truncated %v; want bump, http/1.1, not truncated", kind, rec.Action, rec.ALPN, rec.Truncated)
		}
	}
}

// A quic record's alpn is cut so too: quic-go's 50 names of 0xff bytes,
// 12 datagrams of 15 KB, made a 64 KB record.
func TestQUICRecordALPNBounded(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	offer := hugeALPN(50)
	flight := quicFirstFlightWith(t, &tls.Config{ServerName: "blocked.example.test", NextProtos: offer})
	startFlow(p, quicClient, dst.addr(), flight...)
	got := recs.records(t, 1)[0]
	line, _ := json.Marshal(got)
	if got.Kind != "quic" || got.Action != "deny" || !got.Truncated || len(line) > 1024 {
		t.Fatalf("record of %d bytes: %.300s; want a quic deny, truncated, under 1 KB", len(line), line)
	}
	checkALPNCut(t, offer, got.ALPN)
}

// FuzzALPNList: any offer (names of any bytes, each its length byte and
// its bytes, none empty) is written in printable ASCII; whole, it reads back as the
// offer; past alpnKeep bytes of JSON it is cut to them, its ends kept
// whole (checkALPNCut).
func FuzzALPNList(f *testing.F) {
	f.Add([]byte("\x02h2\x08http/1.1"))
	f.Add([]byte("\x0bh2,http/1.1\x03a\\b"))
	f.Add(slices.Repeat([]byte("\xff"+strings.Repeat("\xff", 254)+"z"), 54))
	f.Add(slices.Repeat([]byte("\x03<&>"), 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		var offer []string
		for len(b) > 0 {
			// No empty name: the sniffer refuses an offer with one
			// (RFC 7301), and it would write as no offer at all.
			if n := min(int(b[0]), len(b)-1); n > 0 {
				offer = append(offer, string(b[1:1+n]))
			}
			b = b[1+min(int(b[0]), len(b)-1):]
		}
		got, cut := alpnList(offer)
		if !cut {
			if back := alpnParse(t, got); !slices.Equal(back, offer) {
				t.Fatalf("%q: written %q, reads back as %q", offer, got, back)
			}
			for i := 0; i < len(got); i++ {
				if got[i] < '!' || got[i] > '~' {
					t.Fatalf("%q: written %q, with byte %#x", offer, got, got[i])
				}
			}
			if enc, _ := json.Marshal(got); len(enc)-2 > alpnKeep {
				t.Fatalf("%q: written whole in %d bytes of JSON", offer, len(enc)-2)
			}
			return
		}
		checkALPNCut(t, offer, got)
	})
}
