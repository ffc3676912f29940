package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

const clsBumpAll = `
policy:
  default: bump
`

// A reload reaches the next request of a bumped keep-alive connection
// opened before it: the appliance hands the interceptor its policy holder,
// so each request is decided by the policy in force as it arrives. The
// connection stays bumped; the request the reload denies gets the 403.
// Each record names the policy that decided it: the request before the
// reload the old one, the request after it the new one. The connection,
// decided before the reload, recorded after it, names the new one too: the
// reload denied its own name (allowed.example, its SNI), which ended it,
// and its tls record says so (policy.md); it said bump, ok, under the old
// policy (review r4s29 F1).
func TestReloadDecidesKeepAliveRequest(t *testing.T) {
	r := newClsRig(t, clsBumpAll, clsOptions{bump: true})
	oldID := r.p.cfg.Policy.Load().ID()
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Certificate())
	c := r.dial(t, r.tlsDest)
	defer c.Close()
	tc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	get := func(path string) (int, string) {
		t.Helper()
		fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: allowed.example\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	if code, body := get("/before"); code != 200 || body != "hello host=allowed.example" {
		t.Fatalf("before the reload: %d %q", code, body)
	}
	tightened, err := policy.Parse("test.yaml", []byte(clsBumpAll+`  rules:
    - name: no-allowed
      domains: ["allowed.example"]
      action: deny
`))
	if err != nil {
		t.Fatal(err)
	}
	r.p.cfg.Policy.Store(tightened) // the reload
	if code, body := get("/after"); code != http.StatusForbidden || !strings.Contains(body, "no-allowed") {
		t.Fatalf("after the reload denied the name: %d %q, want the appliance's 403", code, body)
	}
	tc.Close()
	conn := r.record(t, c, "tls") // the connection's, written once its requests' are
	newID := tightened.ID()
	if oldID == "" || newID == "" || oldID == newID {
		t.Fatalf("policy IDs %q before the reload, %q after: want two, not the same", oldID, newID)
	}
	if conn.Policy != newID || conn.Action != "deny" || conn.Rule != "no-allowed" || conn.Result != "denied" ||
		!strings.Contains(conn.Error, "ended by a policy reload: the connection's name") {
		t.Errorf("the connection's tls record: policy %q action %q rule %q result %q error %q, want denied by no-allowed of %q, ended by the reload",
			conn.Policy, conn.Action, conn.Rule, conn.Result, conn.Error, newID)
	}
	var got []string
	for _, rec := range r.recs.parse(t) {
		if rec.Kind == "http" {
			got = append(got, fmt.Sprintf("%s %s %s %d %s %s", rec.Path, rec.Action, rec.Rule, rec.Status, rec.Result, rec.Policy))
		}
	}
	want := fmt.Sprintf("/before bump default 200 ok %s; /after deny no-allowed 403 denied %s", oldID, newID)
	if strings.Join(got, "; ") != want {
		t.Errorf("http records %q, want %q", got, want)
	}
}
