package intercept_test

import (
	"net/http"
	"strings"
	"testing"
)

// longHosts are Hosts longer than a DNS name may be, each with the words
// the record's error gives for it. 60 KB of one-letter labels fit in a
// 64 KiB head and made policy matching quadratic (200 ms of CPU a request
// under 10 rules of 16 wildcards); 60 KB of distinct CJK characters made
// IDNA's Punycode encoding quadratic (seconds a request).
func longHosts() []struct{ name, host, why string } {
	var cjk strings.Builder
	for r := rune(0x4E00); cjk.Len() < 60<<10; r++ {
		cjk.WriteRune(r)
	}
	return []struct{ name, host, why string }{
		{"60 KB of labels", strings.Repeat("a.", 30<<10) + "com", "longer than any name and port"},
		{"60 KB of labels and a port", strings.Repeat("a.", 30<<10) + "com:80", "longer than any name and port"},
		{"60 KB of CJK", cjk.String() + ".example", "longer than any name and port"},
		{"254 bytes", strings.Repeat("a.", 125) + "test", "a name of 254 bytes, over 253"},
		{"254 bytes and a port", strings.Repeat("a.", 125) + "test:8080", "a name of 254 bytes, over 253"},
		{"a label of 64", strings.Repeat("a", 64) + ".example", "a label of over 63 bytes"},
	}
}

// longIDNHosts are within maxAuthorityLen's bytes, but Punycode's cost is
// in a label's characters: they are refused before IDNA reads them (one
// label of 340 cost 2 ms a request). HTTP/1 only: Go's HTTP/2 client
// sends the xn-- form itself.
func longIDNHosts() []struct{ name, host, why string } {
	return []struct{ name, host, why string }{
		{"one CJK label of 340 characters", cjkLabel(340), "a label of over 63 characters"},
		{"254 CJK characters and 5 full stops", cjkLabels(254), "a name of 259 characters, over 253"},
	}
}

// cjkLabel is one label of n distinct CJK characters.
func cjkLabel(n int) string {
	r := make([]rune, n)
	for i := range r {
		r[i] = rune(0x4E00 + i)
	}
	return string(r)
}

// cjkLabels is n CJK characters in labels of 50 separated by ideographic
// full stops, which IDNA takes for dots.
func cjkLabels(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 && i%50 == 0 {
			b.WriteRune('\u3002')
		}
		b.WriteRune(rune(0x4E00 + i))
	}
	return b.String()
}

// TestEvasionLongHost: a Host longer than 253 bytes, or with a label
// longer than 63, names nothing (the SNI is held to the same limits): it
// is answered 400 and recorded as a deny with no rule, its error saying
// why, and never reaches the origin. A name of exactly 253 bytes (254 with
// the root's trailing dot) with labels of 63 passes.
func TestEvasionLongHost(t *testing.T) {
	r := newRig(t, idnPolicy)
	for _, tc := range append(longHosts(), longIDNHosts()...) {
		upEnd, up := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		resp, body := hc.do("GET /x HTTP/1.1\r\nHost: " + tc.host + "\r\n\r\n")
		c.Close() // a 400 keeps the connection open for the next request
		sv.waitDoneOnce(t)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d %q, want 400", tc.name, resp.StatusCode, body)
		}
		if got := up.requests(); len(got) != 0 {
			t.Errorf("%s: the origin received %d requests", tc.name, len(got))
		}
		recs := ofKind(r.records(), "http")
		if n := len(recs); n == 0 {
			t.Fatalf("%s: no http record", tc.name)
		}
		rec := recs[len(recs)-1]
		if rec.Action != "deny" || rec.Rule != "" || rec.Status != 400 || rec.Host != tc.host || !strings.Contains(rec.Error, tc.why) {
			t.Errorf("%s: record action %q rule %q status %d error %q (host of %d bytes), want a 400 deny with no rule saying %q",
				tc.name, rec.Action, rec.Rule, rec.Status, rec.Error, len(rec.Host), tc.why)
		}
	}
	label63 := strings.Repeat("b", 63)
	for _, host := range []string{
		strings.Repeat("a.", 124) + "test", // 252 bytes
		strings.Repeat("a.", 124) + "test.",
		strings.Repeat("a.", 124) + "test5", // 253
		strings.Repeat("a.", 124) + "test5.",
		label63 + "." + label63 + ".example",
	} {
		upEnd, up := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		resp, body := hc.do("GET /x HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
		c.Close()
		sv.waitDoneOnce(t)
		if resp.StatusCode != http.StatusOK || len(up.requests()) != 1 {
			t.Errorf("Host of %d bytes: status %d %q, origin got %d requests; want it passed", len(host), resp.StatusCode, body, len(up.requests()))
		}
	}
}

// TestEvasionH2LongAuthority: an HTTP/2 :authority is held to the same
// limits as a Host.
func TestEvasionH2LongAuthority(t *testing.T) {
	for _, tc := range longHosts()[3:] { // beyond the client's header list limit, the long ones
		t.Run(tc.name, func(t *testing.T) { wantH2AuthorityRefused(t, tc.host, tc.why) })
	}
}
