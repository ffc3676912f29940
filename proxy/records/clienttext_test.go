package records

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCutClientText: a record's client-chosen fields past the limit are
// cut to it (JSON bytes, whole runes, ending in the cut mark) and the
// record marked truncated; the rest, and a record within the limit, are
// left as they are. ClientTextOver counts the JSON bytes past the limit.
func TestCutClientText(t *testing.T) {
	const limit = 256
	long := "/" + strings.Repeat("p", 3000)
	ua := strings.Repeat("é", 200)    // 400 bytes, each kept whole
	ctl := strings.Repeat("\x01", 50) // 300 bytes of JSON from 50
	r := Record{Kind: "http", Path: long, UserAgent: ua, Method: "GET", Host: "h.example", Error: strings.Repeat("e", 1000)}
	if got, want := r.ClientTextOver(limit), len(long)-limit+len(ua)-limit; got != want {
		t.Fatalf("ClientTextOver = %d, want %d", got, want)
	}
	if !r.CutClientText(limit) || !r.Truncated {
		t.Fatal("nothing cut, or not marked truncated")
	}
	if head, tail, ok := strings.Cut(r.Path, cutMark); jsonLen(r.Path) != limit || !ok ||
		!strings.HasPrefix(long, head) || !strings.HasSuffix(long, tail) || len(head) < 120 || len(tail) < 120 {
		t.Fatalf("path cut to %q", r.Path)
	}
	if head, tail, ok := strings.Cut(r.UserAgent, cutMark); jsonLen(r.UserAgent) > limit || !ok ||
		!strings.HasPrefix(ua, head) || !strings.HasSuffix(ua, tail) || !utf8.ValidString(r.UserAgent) || len(head) < 120 || len(tail) < 120 {
		t.Fatalf("user agent cut to %q", r.UserAgent)
	}
	if r.Method != "GET" || r.Host != "h.example" || len(r.Error) != 1000 {
		t.Fatalf("other fields changed: %+v", r)
	}
	if r.ClientTextOver(limit) != 0 || r.CutClientText(limit) {
		t.Fatal("a cut record is over the limit still")
	}

	short := Record{Path: "/index.html", UserAgent: "curl/8.5.0", Method: "GET"}
	if short.ClientTextOver(limit) != 0 || short.CutClientText(limit) || short.Truncated {
		t.Fatalf("a short record was cut: %+v", short)
	}
	esc := Record{Method: ctl}
	if got := esc.ClientTextOver(limit); got != 6*50-limit {
		t.Fatalf("ClientTextOver of escaped bytes = %d, want %d", got, 6*50-limit)
	}
	if !esc.CutClientText(limit) || jsonLen(esc.Method) > limit {
		t.Fatalf("escaped method cut to %d bytes of JSON", jsonLen(esc.Method))
	}
	if testing.AllocsPerRun(100, func() { r.ClientTextOver(limit) }) != 0 {
		t.Fatal("ClientTextOver allocates")
	}
}

// TestCutClientTextHostAndError: a record's host and error, which quote
// what a client sent where it could not be used (a Host that cannot be
// read, a malformed body's line), keep 4 times the limit whole (a name
// and a port, and the appliance's own words, never come near it): past
// it they pay, and are cut keeping both ends, as the other fields are.
func TestCutClientTextHostAndError(t *testing.T) {
	const limit = 256
	host := strings.Repeat("h", 5000) + "!"
	quoted := "Host \"" + host + "\": a character no host name has"
	r := Record{Kind: "http", Method: "GET", Host: host, Error: quoted}
	if got, want := r.ClientTextOver(limit), len(host)-4*limit+jsonLen(quoted)-4*limit; got != want {
		t.Fatalf("ClientTextOver = %d, want %d", got, want)
	}
	if !r.CutClientText(limit) || !r.Truncated {
		t.Fatal("nothing cut, or not marked truncated")
	}
	for _, f := range []struct{ name, whole, cut string }{{"host", host, r.Host}, {"error", quoted, r.Error}} {
		head, tail, ok := strings.Cut(f.cut, cutMark)
		if !ok || jsonLen(f.cut) > 4*limit || jsonLen(f.cut) < 4*limit-12 || !strings.HasPrefix(f.whole, head) || !strings.HasSuffix(f.whole, tail) {
			t.Errorf("%s cut to %d bytes of JSON: %q", f.name, jsonLen(f.cut), f.cut)
		}
	}
	if !strings.HasSuffix(r.Error, "!\": a character no host name has") {
		t.Errorf("the error's end, the appliance's words, lost: %q", r.Error)
	}
	fits := Record{Host: strings.Repeat("a", 253) + ":65535", Error: strings.Repeat("e", 4*limit)}
	if fits.ClientTextOver(limit) != 0 || fits.CutClientText(limit) {
		t.Fatalf("a host and an error within 4 times the limit cut: %+v", fits)
	}
}

// TestCutClientTextKeepsTail: a cut field keeps its end as well as its
// start, so a client whose budget is spent cannot push a path's tail out
// of its record with padding: the cut kept the first 256 bytes only, and
// "/" + 300 bytes of padding + "/../../etc/passwd" was recorded as the
// padding.
func TestCutClientTextKeepsTail(t *testing.T) {
	const limit = 256
	r := Record{Path: "/" + strings.Repeat("x", 300) + "/../../etc/passwd"}
	if !r.CutClientText(limit) || !strings.HasPrefix(r.Path, "/xxx") || !strings.HasSuffix(r.Path, "x/../../etc/passwd") ||
		!strings.Contains(r.Path, cutMark) || jsonLen(r.Path) > limit {
		t.Fatalf("path cut to %q", r.Path)
	}
}

// TestCutEnds: over random text of ASCII, bytes JSON escapes, runes of two
// to four bytes and bytes that are no UTF-8, a cut field is the start and
// the end of the text, whole runes, with the mark between; its JSON, as
// encoding/json writes it, is at most the limit and not far under it; and
// it is valid UTF-8 wherever the text was.
func TestCutEnds(t *testing.T) {
	rng := rand.New(rand.NewPCG(30, 4))
	pieces := []string{"a", "/", "<", "\"", "\n", "\x01", "é", "€", "𝄞", "\u2028", "\xff", "\xe2\x82"}
	for range 2000 {
		var b strings.Builder
		for b.Len() < 200+rng.IntN(600) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		s := b.String()
		limit := 16 + rng.IntN(300)
		if jsonLen(s) <= limit {
			continue
		}
		cut := cutEnds(s, limit)
		enc, _ := json.Marshal(cut)
		head, tail, ok := strings.Cut(cut, cutMark)
		switch {
		case !ok || !strings.HasPrefix(s, head) || !strings.HasSuffix(s, tail):
			t.Fatalf("cutEnds(%q, %d) = %q: not the text's start, the mark and its end", s, limit, cut)
		case len(enc)-2 != jsonLen(cut) || jsonLen(cut) > limit || jsonLen(cut) < limit-12:
			t.Fatalf("cutEnds(%q, %d) = %q: %d bytes of JSON (counted %d), want at most %d, at least %d", s, limit, cut, len(enc)-2, jsonLen(cut), limit, limit-12)
		case utf8.ValidString(s) && !utf8.ValidString(cut):
			t.Fatalf("cutEnds(%q, %d) = %q: a rune split", s, limit, cut)
		case jsonLen(head)-jsonLen(tail) > 10 || jsonLen(tail)-jsonLen(head) > 10: // each end short of its half by a rune of 6 at most
			t.Fatalf("cutEnds(%q, %d) = %q: ends of %d and %d bytes of JSON, want halves", s, limit, cut, jsonLen(head), jsonLen(tail))
		}
	}
}

// BenchmarkClientTextOver: what the text budget's look at each request's
// record costs (proxy/textbudget.go): a browser's request (a short path,
// a 110-byte User-Agent), and the flood's (BenchmarkRecordFlood's 3 KB and
// 30 KB paths with a 1 KB User-Agent).
func BenchmarkClientTextOver(b *testing.B) {
	ua := "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
	for _, tc := range []struct {
		name string
		r    Record
	}{
		{"browser", Record{Method: "GET", Path: "/static/js/app.3f9a2c.js", UserAgent: ua}},
		{"path=3000", Record{Method: "GET", Path: "/" + strings.Repeat("p", 3000), UserAgent: strings.Repeat("u", 1000)}},
		{"path=30000", Record{Method: "GET", Path: "/" + strings.Repeat("p", 30000), UserAgent: strings.Repeat("u", 1000)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.r.Method) + len(tc.r.Path) + len(tc.r.UserAgent)))
			for b.Loop() {
				tc.r.ClientTextOver(256)
			}
		})
	}
}

// TestJSONLenEachByte: jsonLen, which looks ASCII bytes up in a table,
// agrees with encoding/json on every byte alone and between others.
func TestJSONLenEachByte(t *testing.T) {
	for b := range 256 {
		for _, s := range []string{string([]byte{byte(b)}), "a" + string([]byte{byte(b)}) + "é<"} {
			enc, _ := json.Marshal(s)
			if got := jsonLen(s); got != len(enc)-2 {
				t.Errorf("jsonLen(%q) = %d, encoding/json writes %d", s, got, len(enc)-2)
			}
		}
	}
}

// CutText leaves text that fits whole, allocating nothing, and cuts the
// rest as cutEnds does: the proxy cuts a ClientHello's ALPN offer with it.
func TestCutText(t *testing.T) {
	for _, s := range []string{"", "h2,http/1.1", strings.Repeat("a", 256), strings.Repeat("<", 42)} {
		if got, cut := CutText(s, 256); got != s || cut {
			t.Errorf("CutText(%.40q, 256) = %.40q, %v: want it whole", s, got, cut)
		}
	}
	s := "h2,http/1.1"
	if n := testing.AllocsPerRun(100, func() { _, _ = CutText(s, 256) }); n != 0 {
		t.Errorf("CutText of text that fits: %v allocations", n)
	}
	for _, s := range []string{strings.Repeat("a", 257), strings.Repeat("<", 43), strings.Repeat(`\255`, 100)} {
		got, cut := CutText(s, 256)
		if !cut || got != cutEnds(s, 256) || jsonLen(got) > 256 {
			t.Errorf("CutText(%.40q, 256) = %.40q (%d bytes of JSON), %v: want it cut", s, got, jsonLen(got), cut)
		}
	}
}
