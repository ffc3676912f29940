package records

import (
	"strings"
	"testing"
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
	if jsonLen(r.Path) > limit || !strings.HasSuffix(r.Path, cutMark) || !strings.HasPrefix(long, strings.TrimSuffix(r.Path, cutMark)) {
		t.Fatalf("path cut to %q", r.Path)
	}
	if jsonLen(r.UserAgent) > limit || !strings.HasSuffix(r.UserAgent, "é"+cutMark) {
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
