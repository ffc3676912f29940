package sniff

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// quoteCutMax is the longest quoteCut writes: each end's quoteKeep bytes
// at 4 bytes a byte (\xff) and their quotes, the mark, and the length.
const quoteCutMax = 2*(2+4*quoteKeep) + len("… (4294967295 bytes)")

// FuzzQuoteCut: any bytes quoted for an error are valid UTF-8 and at most
// quoteCutMax bytes; up to 2*quoteKeep bytes they read back whole, and
// past that as their first and last quoteKeep bytes and their length.
// (Review rev31c F3: 689d4ce's short quoting had no fuzz target.)
func FuzzQuoteCut(f *testing.F) {
	f.Add([]byte("a b.example"))
	f.Add([]byte("<" + strings.Repeat("\xff", 5000) + "\x01"))
	f.Add([]byte(strings.Repeat("\u2028\"\\…", 20)))
	f.Fuzz(func(t *testing.T, b []byte) {
		q := quoteCut(b)
		if !utf8.ValidString(q) || len(q) > quoteCutMax {
			t.Fatalf("quoteCut of %d bytes: %d bytes, valid UTF-8 %v: %.300q", len(b), len(q), utf8.ValidString(q), q)
		}
		if len(b) <= 2*quoteKeep {
			if back, err := strconv.Unquote(q); err != nil || back != string(b) {
				t.Fatalf("quoteCut(%q) = %s reads back as %q, %v", b, q, back, err)
			}
			return
		}
		head, err := strconv.QuotedPrefix(q)
		if err != nil {
			t.Fatalf("quoteCut(%q) = %s: %v", b, q, err)
		}
		rest, ok := strings.CutPrefix(q[len(head):], "…")
		if !ok {
			t.Fatalf("quoteCut(%q) = %s: no mark after the head", b, q)
		}
		tail, err := strconv.QuotedPrefix(rest)
		if err != nil {
			t.Fatalf("quoteCut(%q) = %s: %v", b, q, err)
		}
		h, _ := strconv.Unquote(head)
		e, _ := strconv.Unquote(tail)
		if h != string(b[:quoteKeep]) || e != string(b[len(b)-quoteKeep:]) || rest[len(tail):] != fmt.Sprintf(" (%d bytes)", len(b)) {
			t.Fatalf("quoteCut(%q) = %s: not its first and last %d bytes and its length", b, q, quoteKeep)
		}
	})
}

// FuzzClientHelloErrorBounded: a ClientHello whose server_name holds any
// bytes is read, or refused with an error that is valid UTF-8 and short,
// the host_name quoted by quoteCut when it is invalid; and any bytes at
// all are refused with a short error.
func FuzzClientHelloErrorBounded(f *testing.F) {
	f.Add([]byte("a.example"), []byte(nil))
	f.Add([]byte("<"+strings.Repeat("\xff", 5000)+"\x01"), []byte(nil))
	f.Add([]byte("a b.example"), record(helloBody(sniExt(hostName("a b.example")), alpnExt("h2"))))
	f.Fuzz(func(t *testing.T, name, raw []byte) {
		if len(name) > 8000 {
			name = name[:8000] // within one record
		}
		const most = 400 // the parser's words and one quoteCut
		for _, b := range [][]byte{record(helloBody(sniExt(hostName(string(name))))), raw} {
			_, err := ParseClientHello(b)
			if err != nil && (len(err.Error()) > most || !utf8.ValidString(err.Error())) {
				t.Fatalf("an error of %d bytes, valid UTF-8 %v: %.300q", len(err.Error()), utf8.ValidString(err.Error()), err)
			}
		}
		h, err := ParseClientHello(record(helloBody(sniExt(hostName(string(name))))))
		switch valid := validHostName(name); {
		case valid && (err != nil || h.ServerName != string(name)):
			t.Fatalf("host_name %q: %q, %v", name, h.ServerName, err)
		case !valid && (err == nil || !strings.Contains(err.Error(), "invalid host_name "+quoteCut(name))):
			t.Fatalf("invalid host_name %q: %v, want it quoted by quoteCut", name, err)
		}
	})
}
