package intercept_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestEvasionH2MultiColonAuthority: over HTTP/2 goproxy takes :authority as
// the URL host unparsed. A Host with two colons is one an origin may cut at
// its first colon (nginx does): it must be refused, not decided as a name no
// rule matches. So is one with an empty label ("evil.example.test..", which
// rules ignoring one trailing dot would not take for evil.example.test).
func TestEvasionH2MultiColonAuthority(t *testing.T) {
	for _, host := range []string{"evil.example.test:1:2", "evil.example.test:80:", "evil.example.test::",
		"evil.example.test..", ".evil.example.test", "a..evil.example.test:80"} {
		t.Run(host, func(t *testing.T) { wantH2AuthorityRefused(t, host, "") })
	}
}

// wantH2AuthorityRefused sends an HTTP/2 request with :authority host and
// checks it is answered 400, never reaches the origin, and is recorded as
// one 400 deny whose error holds why.
func wantH2AuthorityRefused(t *testing.T, host, why string) {
	t.Helper()
	r := newRig(t, idnPolicy)
	upEnd, up := r.startUpstream(nil)
	c, _ := r.connect(upEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://ok.example/a", nil)
	req.Host = host
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("%v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cc.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d %q, want 400", resp.StatusCode, body)
	}
	if len(up.requests()) != 0 {
		t.Errorf("the origin received %q", up.requests())
	}
	recs := ofKind(r.records(), "http")
	if len(recs) != 1 || recs[0].Action != "deny" || recs[0].Status != 400 || recs[0].Host != host || !strings.Contains(recs[0].Error, why) {
		t.Errorf("records %+v, want one 400 deny for %q saying %q", recs, host, why)
	}
}
