package records

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzCutClientText: for any texts and limit, jsonLen agrees with
// encoding/json; CutText leaves text that fits whole and cuts the rest to
// the text's start, the mark and the text's end (cutEnds), within limit
// bytes of JSON and no more than 5 under it, valid UTF-8 wherever the
// text was; CutClientText leaves no field over its share, cuts exactly
// when ClientTextOver saw text over, marks the record truncated when it
// cuts, and leaves a field that fits as it was. (Review rev31c F3: the
// cutters of 689d4ce and 03f6c66 had no fuzz target.)
func FuzzCutClientText(f *testing.F) {
	f.Add("/"+strings.Repeat("p", 400)+"\xff\xe2\x82", "Mozilla/5.0", uint16(256))
	f.Add(strings.Repeat("é\x01<", 500), strings.Repeat("\u2028", 100), uint16(1024))
	f.Add("\xf0\x9d\x84\x9e\xe2\x80\xa6\xed\xa0\x80", "…", uint16(20))
	f.Add(strings.Repeat(`\255`, 300), "h2,http/1.1", uint16(256))
	f.Fuzz(func(t *testing.T, s, u string, lim uint16) {
		for _, x := range []string{s, u} {
			if enc, _ := json.Marshal(x); jsonLen(x) != len(enc)-2 {
				t.Fatalf("jsonLen(%q) = %d, encoding/json %d", x, jsonLen(x), len(enc)-2)
			}
		}
		limit := 16 + int(lim)%2000
		checkCut(t, s, limit)
		checkCut(t, u, limit)

		r := Record{Path: s, UserAgent: u, Method: u, Host: s, Error: u + s}
		before := r
		over := r.ClientTextOver(limit)
		cut := r.CutClientText(limit)
		if (over > 0) != cut || cut != r.Truncated || r.ClientTextOver(limit) != 0 {
			t.Fatalf("over %d, cut %v, truncated %v, over after the cut %d", over, cut, r.Truncated, r.ClientTextOver(limit))
		}
		for i, c := range r.clientText() {
			was := *before.clientText()[i].f
			keep := c.share * limit
			switch {
			case jsonLen(was) <= keep && *c.f != was:
				t.Fatalf("field %d fit in %d and was changed: %q -> %q", i, keep, was, *c.f)
			case jsonLen(was) > keep && *c.f != cutEnds(was, keep):
				t.Fatalf("field %d over %d: %q, want cutEnds' %q", i, keep, *c.f, cutEnds(was, keep))
			}
		}
	})
}

// checkCut checks CutText(s, limit) and the cut it makes.
func checkCut(t *testing.T, s string, limit int) {
	t.Helper()
	got, cut := CutText(s, limit)
	if fits := jsonLen(s) <= limit; fits {
		if cut || got != s {
			t.Fatalf("CutText(%q, %d) = %q, %v: it fits", s, limit, got, cut)
		}
		return
	}
	if !cut {
		t.Fatalf("CutText(%q, %d): not cut, %d bytes of JSON", s, limit, jsonLen(s))
	}
	// Some mark in the cut splits it into the text's start and end: the
	// text may hold the mark itself.
	ok := false
	for i := strings.Index(got, cutMark); i >= 0 && !ok; {
		ok = strings.HasPrefix(s, got[:i]) && strings.HasSuffix(s, got[i+len(cutMark):])
		j := strings.Index(got[i+1:], cutMark)
		if j < 0 {
			break
		}
		i += 1 + j
	}
	enc, _ := json.Marshal(got)
	switch n := len(enc) - 2; {
	case !ok:
		t.Fatalf("CutText(%q, %d) = %q: not its start, the mark and its end", s, limit, got)
	case n > limit || n < limit-5:
		t.Fatalf("CutText(%q, %d) = %q: %d bytes of JSON", s, limit, got, n)
	case utf8.ValidString(s) && !utf8.ValidString(got):
		t.Fatalf("CutText(%q, %d) = %q: a rune split", s, limit, got)
	}
}
