package intercept_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// wantOwnNameDeniedTLS checks the one tls record among recs: a connection
// whose own name (www.example.test) a reload denied by rule no-www, ended
// cleanly while that policy was in force, says so (policy.md: "Its tls
// record, when it ends cleanly with its name denied, says so").
func wantOwnNameDeniedTLS(t *testing.T, recs []records.Record) {
	t.Helper()
	tr := ofKind(recs, "tls")
	if len(tr) != 1 {
		t.Fatalf("%d tls records, want 1: %+v", len(tr), recs)
	}
	if rec := tr[0]; rec.Action != "deny" || rec.Rule != "no-www" || rec.Result != "denied" ||
		!strings.Contains(rec.Error, "ended by a policy reload: the connection's name") {
		t.Errorf("tls record action %q rule %q result %q policy %q error %q, want denied by no-www, ended by the reload",
			rec.Action, rec.Rule, rec.Result, rec.Policy, rec.Error)
	}
}

// wantEOF checks that the proxy closed the client's connection, br its
// reader: read to its end within a second, not a read that times out on
// a connection kept open.
func wantEOF(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	b, err := br.ReadByte()
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("the connection is kept after the 403 that refuses its name (read %q, %v)", b, err)
	}
}

// TestReloadOwnNameNewRequestH1: a new request for a bumped connection's
// own name (Host is its SNI), after a reload that denies that name by the
// policy's rules, got its 403 as a request's own deny: the HTTP/1
// connection was kept, the client free to go on sending requests refused
// alike, and the tls record said bump, ok, under the rule and policy that
// bumped it, while a request for another Host had the name's refusal
// (connection closed, tls record denied by the reload). The request's own
// deny is the name's too: the connection is closed after its 403, and its
// tls record says the reload denied it, whether the request is the
// connection's first or follows one before the reload (review r4s29 F1).
func TestReloadOwnNameNewRequestH1(t *testing.T) {
	for _, before := range []bool{false, true} {
		t.Run(map[bool]string{false: "first request", true: "keep-alive"}[before], func(t *testing.T) {
			r, holder := newReloadableRig(t)
			upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
			raw, sv := r.connect(upEnd, tlsDest)
			hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
			want := 0
			if before {
				want = 1
				if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
					t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
				}
			}
			resp := reloadDeniesNameH1(t, holder, hc, "www.example.test")
			if !resp.Close {
				t.Errorf("the 403 that refuses the connection's name keeps its HTTP/1 connection (Connection %q)", resp.Header.Get("Connection"))
			}
			wantEOF(t, hc.c, hc.br)
			raw.Close()
			sv.waitDoneOnce(t)
			if got := up.requests(); len(got) != want {
				t.Errorf("the destination served %q, want %d requests", got, want)
			}
			all := r.records()
			if recs := ofKind(all, "http"); len(recs) != want+1 {
				t.Fatalf("%d http records, want %d", len(recs), want+1)
			} else if rec := recs[want]; rec.Path != "/after" || rec.Action != "deny" || rec.Rule != "no-www" ||
				rec.Status != http.StatusForbidden || rec.Result != "denied" || rec.Error != "denied by policy" {
				t.Errorf("record of /after: %+v, want its own deny by no-www", rec)
			}
			wantOwnNameDeniedTLS(t, all)
		})
	}
}

// TestReloadOwnNameNewRequestH2: the same over HTTP/2. The 403 ends the
// stream alone (a name the rules deny sends no GOAWAY: a new connection
// would be refused as well), and the tls record says bump, ok, under the
// old rule and policy, though every request after the reload was refused
// for the name (review r4s29 F1).
func TestReloadOwnNameNewRequestH2(t *testing.T) {
	wantOwnNameDeniedTLS(t, reloadDeniesNameH2(t, "www.example.test"))
}

// TestReloadOwnNameUnderWayTLSRecord: a request for the connection's own
// name under way across a reload that denies the name (its answer's head
// come after it) is refused as the name's deny, its HTTP/1 connection
// closed (review r10s28 N1); its tls record said bump, ok, under the old
// policy all the same, the name never decided as denied. It says the
// reload denied it, as after such a request for another Host.
func TestReloadOwnNameUnderWayTLSRecord(t *testing.T) {
	for _, host := range []string{"api.example.test", "www.example.test"} {
		t.Run(host, func(t *testing.T) {
			r, holder := newReloadableRig(t)
			raw, sv, arrived, release := connectSlowH1Origin(t, r, r.upLeaf("www.example.test"))
			hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
			io.WriteString(hc.c, "GET /slow HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
			<-arrived
			reloadTo(t, holder, tightenedPolicy)
			close(release)
			if resp, body := hc.read("/slow"); resp.StatusCode != http.StatusForbidden || !resp.Close {
				t.Fatalf("/slow after the reload: %d (close %v) %q, want a 403 that closes", resp.StatusCode, resp.Close, body)
			}
			wantEOF(t, hc.c, hc.br)
			raw.Close()
			sv.waitDoneOnce(t)
			wantOwnNameDeniedTLS(t, r.records())
		})
	}
}
