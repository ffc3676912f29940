package intercept_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// wantNameDeniedRecord checks rec, the record of a request for another
// name on a connection whose own name a reload denied.
func wantNameDeniedRecord(t *testing.T, rec records.Record, path string) {
	t.Helper()
	if rec.Path != path || rec.Action != "deny" || rec.Rule != "no-www" || rec.Result != "denied" ||
		rec.Status != http.StatusForbidden || !strings.Contains(rec.Error, `the connection's name (SNI "www.example.test") is no longer allowed`) {
		t.Errorf("record of %s: action %s rule %q status %d result %s error %q, want denied by no-www for the connection's name",
			path, rec.Action, rec.Rule, rec.Status, rec.Result, rec.Error)
	}
}

// h2GetStatus asks for path on host over cc, its body read, and returns the
// status; an error fails the test.
func h2GetStatus(t *testing.T, cc *http2.ClientConn, host, path string) int {
	t.Helper()
	resp, err := h2GetHost(cc, host, path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return resp.StatusCode
}

// reloadDeniesNameH1 reloads to tightenedPolicy, which denies the name of
// hc's bumped connection (www.example.test) by rule no-www, and asks hc
// for host's /after: it must be refused 403, naming the rule. It returns
// that answer.
func reloadDeniesNameH1(t *testing.T, holder *policy.Holder, hc *httpClient, host string) *http.Response {
	t.Helper()
	reloadTo(t, holder, tightenedPolicy)
	resp, body := hc.do("GET /after HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "no-www") {
		t.Fatalf("after the reload denied the connection's name: %d %q", resp.StatusCode, body)
	}
	return resp
}

// reloadDeniesNameH2 bumps an HTTP/2 connection for www.example.test and
// asks it for host's /before, then reloads to tightenedPolicy, which denies
// that name by rule no-www: host's /after1 and /after2 must be refused 403
// and nothing after /before reach the destination. It closes the
// connection and returns its records, of which three are http.
func reloadDeniesNameH2(t *testing.T, host string) []records.Record {
	t.Helper()
	r, holder := newReloadableRig(t)
	upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "h2")
	raw, sv := r.connect(upEnd, tlsDest)
	tc := bumpClient(t, r, raw, "www.example.test", "h2")
	tc.SetDeadline(time.Time{})
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	if code := h2GetStatus(t, cc, host, "/before"); code != 200 {
		t.Fatalf("before the reload: %d", code)
	}
	reloadTo(t, holder, tightenedPolicy)
	for _, p := range []string{"/after1", "/after2"} {
		if code := h2GetStatus(t, cc, host, p); code != http.StatusForbidden {
			t.Errorf("%s after the reload denied the connection's name: %d, want 403", p, code)
		}
	}
	cc.Close()
	sv.waitDoneOnce(t)
	if got := up.requests(); len(got) != 1 {
		t.Errorf("the destination served %q, want only the request before the reload", got)
	}
	all := r.records()
	if recs := ofKind(all, "http"); len(recs) != 3 {
		t.Fatalf("%d http records, want 3", len(recs))
	}
	return all
}

// TestReloadDeniedSNIRefusesOtherHosts: a reload that denies a bumped
// connection's SNI reached only requests for that name; one for another
// Host went on, over the upstream connection made with the denied name, to
// its server (review r1bypass F1). It is refused now, 403 and a deny
// record with the rule that denied the connection's name, over HTTP/1
// (whose connection then closes) and HTTP/2; nothing more reaches the
// destination.
func TestReloadDeniedSNIRefusesOtherHosts(t *testing.T) {
	t.Run("http1", func(t *testing.T) {
		r, holder := newReloadableRig(t)
		upEnd, up := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
		raw, sv := r.connect(upEnd, tlsDest)
		hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
		if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: other.example.test\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
		}
		reloadDeniesNameH1(t, holder, hc, "other.example.test")
		hc.wantClosed()
		sv.waitDoneOnce(t)
		if got := up.requests(); len(got) != 1 {
			t.Errorf("the destination served %q, want only the request before the reload", got)
		}
		all := r.records()
		recs := ofKind(all, "http")
		if len(recs) != 2 {
			t.Fatalf("%d http records, want 2", len(recs))
		}
		wantNameDeniedRecord(t, recs[1], "/after")
		// The connection's record says what ended it (review r4s26 F3).
		wantOwnNameDeniedTLS(t, all)
	})
	t.Run("http2", func(t *testing.T) {
		recs := ofKind(reloadDeniesNameH2(t, "other.example.test"), "http")
		wantNameDeniedRecord(t, recs[1], "/after1")
		wantNameDeniedRecord(t, recs[2], "/after2")
	})
}

// TestReloadDeniedSNINotRedialled: a request decided before a reload that
// denies the connection's name, still waiting for its upstream connection
// (the kept one ended), had it dialled with the denied name in the
// appliance's own ClientHello after the reload (review r1bypass F1). The
// connection is dialled, nothing is sent on it, and the request is refused.
func TestReloadDeniedSNINotRedialled(t *testing.T) {
	holder := new(policy.Holder)
	hd := newHeldDial()
	var r *rig
	r = newRig(t, testPolicy, func(c *intercept.Config) {
		c.Policy = holder
		c.Dial = hd.dial
	})
	holder.Store(r.pol)
	upEnd, up := r.startUpstreamTCP(r.upLeaf("www.example.test"), "http/1.1")
	up.drop.Store(true) // the kept connection ends after its answer
	raw, sv := r.connect(upEnd, tlsDest)
	hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
	if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: other.example.test\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
	}
	up.waitClosed(t)
	io.WriteString(hc.c, "GET /waiting HTTP/1.1\r\nHost: other.example.test\r\n\r\n")
	select {
	case <-hd.dialing: // decided under the old policy, dialling
	case <-time.After(waitLimit):
		resp, body := hc.read("x")
		t.Fatalf("no dial for the second request: %d %q %+v", resp.StatusCode, body, r.records())
	}
	reloadTo(t, holder, tightenedPolicy)
	originEnd := hd.complete(t)
	resp, body := hc.read("the request waiting for its dial")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("the request waiting for its dial: %d %q, want 403", resp.StatusCode, body)
	}
	wantNothingSent(t, originEnd, "want none (no ClientHello with the denied name)")
	raw.Close()
	sv.waitDoneOnce(t)
	recs := ofKind(r.records(), "http")
	if len(recs) != 2 {
		t.Fatalf("%d http records, want 2", len(recs))
	}
	if rec := recs[1]; rec.Path != "/waiting" || rec.Action != "deny" || rec.Rule != "no-www" || rec.Result != "denied" ||
		!strings.Contains(rec.Error, "the connection's name") {
		t.Errorf("record of the request waiting for its dial: action %s rule %q status %d result %s error %q",
			rec.Action, rec.Rule, rec.Status, rec.Result, rec.Error)
	}
}

// TestReloadDeniedSNIEndsTunnelForOtherHost: a WebSocket tunnel opened for
// another Host on a bumped connection is decided again after a reload on
// the connection's name too: denied, the tunnel ends at its next bytes, as
// one for the denied name does, and both records say so (review r1bypass
// F1).
func TestReloadDeniedSNIEndsTunnelForOtherHost(t *testing.T) {
	reloadEndsBumpedTunnel(t, "other.example.test", "ended by a policy reload: the connection's name")
}

// echDenyPolicy is testPolicy with ech: deny.
const echDenyPolicy = `
policy:
  default: bump
  ech: deny
  rules:
    - name: no-evil
      domains: ["evil.example.test"]
      action: deny
`

// serveECH is rig.serve for a bumped connection whose ClientHello offered
// ECH (a browser's GREASE ECH, which the default ech: allow bumps).
func (r *rig) serveECH(client, proxySide, upEnd net.Conn) *served {
	r.t.Cleanup(func() { client.Close(); proxySide.Close(); upEnd.Close() })
	sv := &served{done: make(chan struct{}), returned: make(chan struct{})}
	r.mu.Lock()
	r.sessions = append(r.sessions, sv)
	r.mu.Unlock()
	go func() {
		defer close(sv.returned)
		br := sniff.NewReader(proxySide)
		res, err := sniff.Sniff(br, proxySide)
		if err != nil || res.Kind != sniff.KindTLS || res.Err != nil {
			r.t.Errorf("sniff: %v %v", err, res.Kind)
			return
		}
		hello := res.Hello
		hello.ECH = true
		subj := policy.Subject{Dest: tlsDest, Client: testClient, Endpoint: testEndpoint, Protocol: policy.ProtoTLS, Domain: hello.ServerName}
		d := r.pol.Decide(subj)
		rec := &records.Record{
			Kind: "tls", Action: d.Action.String(), Rule: d.Rule, Policy: r.pol.ID(), Endpoint: testEndpoint,
			ClientIP: testClient.String(), ClientPort: testClientPort, SNI: hello.ServerName, ECH: true,
			DestIP: tlsDest.Addr().String(), DestPort: tlsDest.Port(), Result: "ok",
		}
		r.ic.Serve(&intercept.Session{
			Client: &peekedConn{Conn: proxySide, r: br, held: &r.held}, Upstream: upEnd, Policy: r.pol,
			Record: rec, Start: time.Now(), Done: sv.doneFunc, Hello: &hello, Decision: d, Subject: subj,
		})
	}()
	return sv
}

// TestReloadECHDenyReachesTheConnectionsOwnName: after a reload to ech:
// deny, a bumped connection whose ClientHello offered ECH went on serving
// requests for its own name (their Host decision knows nothing of ECH),
// over its kept upstream connection (review r4s26 F1); they are refused
// too, as a spliced connection with that ClientHello is ended.
func TestReloadECHDenyReachesTheConnectionsOwnName(t *testing.T) {
	holder := new(policy.Holder)
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Policy = holder })
	holder.Store(r.pol)
	upEnd, up := r.startUpstreamTCP(r.upLeaf("www.example.test"), "http/1.1")
	client, proxySide := testnet.TCPPair(t)
	sv := r.serveECH(client, proxySide, upEnd)
	hc := newHTTPClient(t, bumpClient(t, r, client, "www.example.test", "http/1.1"))
	if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
	}
	reloadTo(t, holder, echDenyPolicy)
	if resp, body := hc.do("GET /after HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("after the reload to ech: deny: %d %q, want 403", resp.StatusCode, body)
	}
	hc.wantClosed()
	sv.waitDoneOnce(t)
	if got := up.requests(); len(got) != 1 {
		t.Errorf("the destination served %q, want only the request before the reload", got)
	}
	recs := ofKind(r.records(), "http")
	if len(recs) != 2 || recs[1].Action != "deny" || !strings.Contains(recs[1].Error, "ech: deny") {
		t.Errorf("records %+v, want the second denied for ech: deny", recs)
	}
}

// serveKeeping is rig.serve for a bumped TLS client that hands over the
// session, for a test to abort it as the stall or client watch does.
func (r *rig) serveKeeping(upEnd net.Conn) (net.Conn, *served, <-chan *intercept.Session) {
	client, proxySide := net.Pipe()
	r.t.Cleanup(func() { client.Close(); proxySide.Close(); upEnd.Close() })
	sv := &served{done: make(chan struct{}), returned: make(chan struct{})}
	r.mu.Lock()
	r.sessions = append(r.sessions, sv)
	r.mu.Unlock()
	sess := make(chan *intercept.Session, 1)
	go func() {
		defer close(sv.returned)
		br := sniff.NewReader(proxySide)
		res, err := sniff.Sniff(br, proxySide)
		if err != nil || res.Kind != sniff.KindTLS {
			r.t.Errorf("sniff: %v %v", res.Kind, err)
			return
		}
		hello := res.Hello
		subj := policy.Subject{Dest: tlsDest, Client: testClient, Endpoint: testEndpoint, Protocol: policy.ProtoTLS, Domain: hello.ServerName}
		d := r.pol.Decide(subj)
		s := &intercept.Session{
			Client: &peekedConn{Conn: proxySide, r: br, held: &r.held}, Upstream: upEnd, Policy: r.pol,
			Record: &records.Record{Kind: "tls", Action: d.Action.String(), Rule: d.Rule, Policy: r.pol.ID(), Endpoint: testEndpoint,
				ClientIP: testClient.String(), ClientPort: testClientPort, SNI: hello.ServerName,
				DestIP: tlsDest.Addr().String(), DestPort: tlsDest.Port(), Result: "ok"},
			Start: time.Now(), Done: sv.doneFunc, Hello: &hello, Decision: d, Subject: subj,
		}
		sess <- s
		r.ic.Serve(s)
	}()
	return client, sv, sess
}

// TestNameDeniedTLSRecordKeepsOtherEnds: the tls record of a connection
// refused for its name after a reload said denied by the reload whatever
// ended it after (a stall, a vanished client), and after a reload that
// allowed the name again (review r8s26 F1, F2). Those ends are said as
// they are; only a clean end under a policy that denies the name says
// denied.
func TestNameDeniedTLSRecordKeepsOtherEnds(t *testing.T) {
	for _, tc := range []struct{ how, result string }{
		{"denied", "denied"}, {"reallowed", "ok"}, {"stalled", "stalled"}, {"vanished", "timeout"},
		{"reloaded-same", "denied"}, // the same file again: the name still denied (review r11s26 F2)
	} {
		t.Run(tc.how, func(t *testing.T) {
			r, holder := newReloadableRig(t)
			upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "h2")
			raw, sv, sess := r.serveKeeping(upEnd)
			tc2 := bumpClient(t, r, raw, "www.example.test", "h2")
			tc2.SetDeadline(time.Time{})
			s := <-sess
			cc, err := (&http2.Transport{}).NewClientConn(tc2)
			if err != nil {
				t.Fatal(err)
			}
			get := func(path string) int { return h2GetStatus(t, cc, "other.example.test", path) }
			if code := get("/before"); code != 200 {
				t.Fatalf("before: %d", code)
			}
			reloadTo(t, holder, tightenedPolicy)
			if code := get("/after"); code != http.StatusForbidden {
				t.Fatalf("after the deny: %d", code)
			}
			switch tc.how {
			case "reallowed":
				reloadTo(t, holder, testPolicy)
			case "reloaded-same":
				reloadTo(t, holder, tightenedPolicy)
			case "stalled":
				s.Abort("stalled", errors.New("the client accepted nothing for 15m0s"))
			case "vanished":
				s.Abort("timeout", errors.New("the client's connection broke: connection timed out"))
			}
			cc.Close()
			raw.Close()
			sv.waitDoneOnce(t)
			tr := ofKind(r.records(), "tls")
			if len(tr) != 1 || tr[0].Result != tc.result {
				t.Fatalf("tls records %+v, want one with result %s", tr, tc.result)
			}
		})
	}
}
