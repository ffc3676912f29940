package intercept_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"golang.org/x/net/http2"
)

// TestReloadOtherHostOwnDenyDecidesName: after a reload whose rules deny a
// bumped connection's own name (www.example.test, rule no-www), a new
// request for another Host that its own rule denies (evil.example.test,
// rule no-evil) got a plain 403 and its HTTP/1 connection was kept, the
// tls record saying bump, ok, under the old rule and policy, until a
// request the rules allow came to decide the name; one for the
// connection's own name closes the connection and decides the name
// (TestReloadOwnNameNewRequestH1). The name's deny needs no destination
// check, so it is decided then too: the 403 closes the connection, and
// the tls record says the reload denied the name, under the new policy.
// The request's own record keeps its own deny: no-evil, "denied by
// policy". The control: a reload whose rules still allow the name keeps
// the connection after that 403, and its tls record as it was.
func TestReloadOtherHostOwnDenyDecidesName(t *testing.T) {
	for _, tc := range []struct {
		name, after string
		before      bool
		closes      bool
	}{
		{"first request", tightenedPolicy, false, true},
		{"keep-alive", tightenedPolicy, true, true},
		{"name allowed", testPolicy, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, holder := newReloadableRig(t)
			upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
			raw, sv := r.connect(upEnd, tlsDest)
			hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
			want := 0
			if tc.before {
				want = 1
				if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
					t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
				}
			}
			after := reloadTo(t, holder, tc.after)
			resp, body := hc.do("GET /after HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "no-evil") {
				t.Fatalf("evil.example.test after the reload: %d %q, want 403 by no-evil", resp.StatusCode, body)
			}
			if resp.Close != tc.closes {
				t.Errorf("the 403 closes the connection: %v, want %v (Connection %q)", resp.Close, tc.closes, resp.Header.Get("Connection"))
			}
			if tc.closes {
				wantEOF(t, hc.c, hc.br)
			} else if resp, body := hc.do("GET /again HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
				t.Errorf("the name still allowed, after the 403: %d %q", resp.StatusCode, body)
			} else {
				want++
			}
			raw.Close()
			sv.waitDoneOnce(t)
			if got := up.requests(); len(got) != want {
				t.Errorf("the destination served %q, want %d requests", got, want)
			}
			all := r.records()
			var evil []string
			for _, rec := range ofKind(all, "http") {
				if rec.Host == "evil.example.test" {
					evil = append(evil, fmt.Sprintf("%s %s %s %d %s %q", rec.Path, rec.Action, rec.Rule, rec.Status, rec.Result, rec.Error))
				}
			}
			if w := fmt.Sprintf("/after deny no-evil 403 denied %q", "denied by policy"); len(evil) != 1 || evil[0] != w {
				t.Errorf("records of evil.example.test %q, want [%s]", evil, w)
			}
			if !tc.closes {
				if tr := ofKind(all, "tls"); len(tr) != 1 || tr[0].Action != "bump" || tr[0].Result != "ok" || tr[0].Error != "" {
					t.Errorf("tls records %+v, want one: bump, ok", tr)
				}
				return
			}
			wantOwnNameDeniedTLS(t, all)
			if tr := ofKind(all, "tls"); tr[0].Policy != after.ID() {
				t.Errorf("tls record policy %q, want the reload's %q", tr[0].Policy, after.ID())
			}
		})
	}
}

// TestReloadOtherHostOwnDenyDecidesNameH2: the same over HTTP/2, where the
// 403 ends the stream alone: the tls record says the reload denied the
// connection's name, though no request for it came.
func TestReloadOtherHostOwnDenyDecidesNameH2(t *testing.T) {
	r, holder := newReloadableRig(t)
	upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "h2")
	raw, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, raw, "www.example.test", "h2")
	tc.SetDeadline(time.Time{})
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	if code := h2GetStatus(t, cc, "www.example.test", "/before"); code != 200 {
		t.Fatalf("before the reload: %d", code)
	}
	after := reloadTo(t, holder, tightenedPolicy)
	if code := h2GetStatus(t, cc, "evil.example.test", "/after"); code != http.StatusForbidden {
		t.Errorf("evil.example.test after the reload: %d, want 403", code)
	}
	cc.Close()
	sv.waitDoneOnce(t)
	all := r.records()
	if recs := ofKind(all, "http"); len(recs) != 2 || recs[1].Rule != "no-evil" || recs[1].Error != "denied by policy" {
		t.Errorf("http records %+v, want /before's and /after's own deny by no-evil", recs)
	}
	wantOwnNameDeniedTLS(t, all)
	if tr := ofKind(all, "tls"); tr[0].Policy != after.ID() {
		t.Errorf("tls record policy %q, want the reload's %q", tr[0].Policy, after.ID())
	}
}

// TestReloadOtherHostOwnDenyNoCheck: a request for another Host that its
// own rule denies, after a reload under which the connection's name is
// allowed only on a destination check (destination_check: dns, an
// upstream certificate nothing verified), starts no check of the name: its
// 403 is certain without one, and a check takes up to its timeout. The
// name is left undecided, the connection kept, until a request that needs
// the name (here its own) decides it: then the check is made, fails, and
// the connection closes.
func TestReloadOtherHostOwnDenyNoCheck(t *testing.T) {
	holder := new(policy.Holder)
	dc := &destCheck{bad: map[string]bool{"www.example.test": true}}
	r := newRig(t, fmt.Sprintf(legacyPolicy, "destination_check: off"), func(c *intercept.Config) {
		c.Policy = holder
		c.DestinationCheck = dc.check
	})
	holder.Store(r.pol)
	upEnd, _ := r.startUpstream(r.strangerLeaf("www.example.test"), "http/1.1")
	raw, sv := r.connect(upEnd, tlsDest)
	hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
	if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
	}
	reloadTo(t, holder, fmt.Sprintf(legacyPolicy, "destination_check: dns"))
	// evil.example.test: the default's deny.
	if resp, body := hc.do("GET /after HTTP/1.1\r\nHost: evil.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden || resp.Close {
		t.Fatalf("evil.example.test after the reload: %d (close %v) %q, want a 403 that keeps the connection", resp.StatusCode, resp.Close, body)
	}
	if calls := dc.called(); len(calls) != 0 {
		t.Errorf("destination checks %q made for a request its own rule denied, want none", calls)
	}
	if resp, body := hc.do("GET /own HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden || !resp.Close {
		t.Errorf("www.example.test after the reload: %d (close %v) %q, want a 403 that closes", resp.StatusCode, resp.Close, body)
	}
	if calls := dc.called(); len(calls) != 1 {
		t.Errorf("destination checks %q, want the name's one", calls)
	}
	raw.Close()
	sv.waitDoneOnce(t)
}

// TestReloadOtherHostOwnDenyNoWaitForCheck: over HTTP/2, after a reload
// under which the connection's name is allowed only on a destination
// check, a request for the name starts that check (one that hangs until
// its timeout); a request for another Host that its own rule denies,
// sent meanwhile, gets its 403 at once, as policy.md says: the name is
// left to the request deciding it. It waited for that check, up to the
// timeout: deciding the name outright waited for the name's lock, which
// the check holds, before finding that it would not check.
func TestReloadOtherHostOwnDenyNoWaitForCheck(t *testing.T) {
	const checkTimeout = 3 * time.Second
	holder := new(policy.Holder)
	dc := &destCheck{block: true}
	r := newRig(t, fmt.Sprintf(legacyPolicy, "destination_check: off"), func(c *intercept.Config) {
		c.Policy = holder
		c.DestinationCheck = dc.check
		c.DestinationCheckTimeout = checkTimeout
	})
	holder.Store(r.pol)
	upEnd, _ := r.startUpstream(r.strangerLeaf("www.example.test"), "h2")
	raw, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, raw, "www.example.test", "h2")
	tc.SetDeadline(time.Time{})
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	if code := h2GetStatus(t, cc, "www.example.test", "/before"); code != 200 {
		t.Fatalf("before the reload: %d", code)
	}
	reloadTo(t, holder, fmt.Sprintf(legacyPolicy, "destination_check: dns"))
	own := make(chan int, 1)
	go func() {
		resp, err := h2GetHost(cc, "www.example.test", "/own")
		if err != nil {
			own <- -1
			return
		}
		own <- resp.StatusCode
	}()
	if !waitFor(t, "the name's check", waitLimit, func() bool { return len(dc.called()) > 0 }) {
		t.FailNow()
	}
	start := time.Now()
	code := h2GetStatus(t, cc, "evil.example.test", "/evil")
	took := time.Since(start)
	ownCode := 0
	select {
	case ownCode = <-own:
		t.Errorf("www.example.test answered %d before evil.example.test's 403 came: that 403 waited for the name's check", ownCode)
	default:
	}
	if code != http.StatusForbidden || took > checkTimeout/3 {
		t.Errorf("evil.example.test: %d after %v, want a 403 at once (the check hangs for %v)", code, took, checkTimeout)
	}
	if ownCode == 0 {
		select {
		case ownCode = <-own:
		case <-time.After(checkTimeout + waitLimit):
			t.Fatal("www.example.test: no answer after its check's timeout")
		}
	}
	if ownCode != http.StatusForbidden {
		t.Errorf("www.example.test, its check timed out: %d, want 403", ownCode)
	}
	if calls := dc.called(); len(calls) != 1 {
		t.Errorf("destination checks %q, want the name's one", calls)
	}
	cc.Close()
	sv.waitDoneOnce(t)
	var evil []string
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Host == "evil.example.test" {
			evil = append(evil, fmt.Sprintf("%s %s %d %q", rec.Path, rec.Action, rec.Status, rec.Error))
		}
	}
	if w := fmt.Sprintf("/evil deny 403 %q", "denied by policy"); len(evil) != 1 || evil[0] != w {
		t.Errorf("records of evil.example.test %q, want [%s]", evil, w)
	}
}
