package intercept_test

import (
	"testing"
)

// The transport sends a non-ASCII Host in its xn-- form, which is how
// docs/policy.md asks rules to name IDNs: the request must be decided (and
// recorded) on that form, or the Unicode spelling walks past a deny rule.
const idnPolicy = `
policy:
  default: allow
  rules:
    - name: no-buecher
      domains: ["xn--bcher-kva.example"]
      action: deny
    - name: no-evil
      domains: ["evil.example.test"]
      action: deny
`

func TestEvasionIDNHost(t *testing.T) {
	r := newRig(t, idnPolicy)
	upEnd, up := r.startUpstream(nil)
	c, sv := r.connect(upEnd, httpDest)
	hc := newHTTPClient(t, c)
	resp, body := hc.do("GET /x HTTP/1.1\r\nHost: bücher.example\r\n\r\n")
	sv.waitDoneOnce(t) // the record is written as the session ends
	if resp.StatusCode != 403 {
		t.Errorf("status %d %q, want 403", resp.StatusCode, body)
	}
	if got := up.requests(); len(got) != 0 {
		t.Errorf("the origin received %q although xn--bcher-kva.example is denied", got)
	}
	recs := r.records()
	if len(recs) != 1 || recs[0].Action != "deny" || recs[0].Rule != "no-buecher" || recs[0].Host != "xn--bcher-kva.example" {
		t.Errorf("records %+v, want one deny by no-buecher for xn--bcher-kva.example", recs)
	}
}

// A Host with an empty label: "evil.example.test.." would not meet the rule
// for evil.example.test (rules ignore one trailing dot) and an origin may
// serve it as that name; ".evil.example.test" and "a..evil.example.test"
// are no names. Each is refused with a 400 and never reaches the origin;
// one trailing dot is the name itself, and denied.
func TestEvasionEmptyLabelHost(t *testing.T) {
	r := newRig(t, idnPolicy)
	for _, tc := range []struct {
		host string
		want int
	}{
		{"evil.example.test..", 400},
		{"evil.example.test..:80", 400},
		{".evil.example.test", 400},
		{"a..evil.example.test", 400},
		{"evil.example.test.", 403},
	} {
		upEnd, up := r.startUpstream(nil)
		c, sv := r.connect(upEnd, httpDest)
		hc := newHTTPClient(t, c)
		resp, body := hc.do("GET /x HTTP/1.1\r\nHost: " + tc.host + "\r\n\r\n")
		c.Close() // a 400 keeps the connection open for the next request
		sv.waitDoneOnce(t)
		if resp.StatusCode != tc.want {
			t.Errorf("Host %s: status %d %q, want %d", tc.host, resp.StatusCode, body, tc.want)
		}
		if got := up.requests(); len(got) != 0 {
			t.Errorf("Host %s: the origin received %q", tc.host, got)
		}
	}
}
