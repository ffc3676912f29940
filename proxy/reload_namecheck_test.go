package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// nameCheckRig is a bumped connection to allowed.example whose SNI check
// passed on an observed answer, and a reload to after that forgets it.
func nameCheckRig(t *testing.T, before, after, host string) (r *clsRig, get func(path string) int, reload func(), end func() records.Record) {
	dst := wsEchoTLSServer(t)
	dc := destcheck.New(destcheck.Config{})
	t.Cleanup(dc.Close)
	r = newClsRig(t, before, clsOptions{bump: true, check: dc.Check, config: wireChecker(dc)})
	ep := fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef))
	dc.Observe(ep, aResponse(dnsQuery(7, "allowed.example", 1), dst.Addr()))
	c, tc := bumpClient(t, r, dst)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(tc)
	get = func(path string) int {
		io.WriteString(tc, "GET "+path+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	reload = func() {
		reloadForgetting(t, r, dc, after)
	}
	end = func() records.Record {
		c.Close()
		return r.record(t, c, "tls")
	}
	return r, get, reload, end
}

// httpRecordOf returns the http record of path, waiting for it.
func httpRecordOf(t *testing.T, r *clsRig, path string) records.Record {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		for _, x := range r.recs.parse(t) {
			if x.Kind == "http" && x.Path == path {
				return x
			}
		}
	}
	t.Fatalf("no http record of %s", path)
	return records.Record{}
}

// TestReloadNameCheckSameHostRecord: a new request for the connection's
// own name, after a reload that forgot the answer the bump's check passed
// on, is refused by that name's check made again, which is its own: its
// record says dest_check mismatch and the check's error, as a request
// whose own check fails does; and the tls record, denied by that check,
// says dest_check mismatch and why, not "ok" next to an error saying the
// check failed (review r3s27 F2).
func TestReloadNameCheckSameHostRecord(t *testing.T) {
	const lookupErr = "no address of allowed.example could be looked up"
	r, get, reload, end := nameCheckRig(t, bumpAnyDNSPolicy, bumpTrustedDNSPolicy, "allowed.example")
	if code := get("/before"); code != http.StatusOK {
		t.Fatalf("before the reload: %d", code)
	}
	reload()
	if code := get("/after"); code != http.StatusForbidden {
		t.Fatalf("after the reload: %d, want 403", code)
	}
	tlsRec := end()
	rec := httpRecordOf(t, r, "/after")
	if rec.DestCheck != "mismatch" || rec.Result != "denied" || !strings.Contains(rec.Error, lookupErr) {
		t.Errorf("the request's record: dest_check %q result %q error %q; want mismatch, denied, the check's error", rec.DestCheck, rec.Result, rec.Error)
	}
	if tlsRec.DestCheck != "mismatch" || tlsRec.Result != "denied" || !strings.Contains(tlsRec.Error, lookupErr) ||
		!strings.Contains(tlsRec.Error, "fails the destination check") || strings.Contains(tlsRec.Error, "was denied after a policy reload") {
		t.Errorf("the tls record: dest_check %q result %q error %q; want mismatch, denied, the check's error and the reload's", tlsRec.DestCheck, tlsRec.Result, tlsRec.Error)
	}
}

// TestReloadNameCheckOtherHostRecord: a request for another Host, refused
// because the connection's name fails its check made again, gives that
// check's error (it names the name and the address) after the note.
func TestReloadNameCheckOtherHostRecord(t *testing.T) {
	const literal = "\n    - name: literal\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
	r, get, reload, end := nameCheckRig(t, bumpAnyDNSPolicy+literal, bumpTrustedDNSPolicy+literal, "127.0.0.1")
	if code := get("/before"); code != http.StatusOK {
		t.Fatalf("before the reload: %d", code)
	}
	reload()
	if code := get("/after"); code != http.StatusForbidden {
		t.Fatalf("after the reload: %d, want 403", code)
	}
	end()
	rec := httpRecordOf(t, r, "/after")
	if rec.DestCheck != "" || !strings.Contains(rec.Error, "the connection's name (SNI \"allowed.example\") is no longer allowed") ||
		!strings.Contains(rec.Error, "no address of allowed.example could be looked up") {
		t.Errorf("the request's record: dest_check %q error %q; want none of its own, the note and the name's check's error", rec.DestCheck, rec.Error)
	}
}

// TestReloadNameCheckAuditRecorded: under an auditing policy the
// connection's name failing its check made again lets the connection go
// on, and its tls record says dest_check mismatch and why, as an audited
// tunnel's record does (review r3s27 F3).
func TestReloadNameCheckAuditRecorded(t *testing.T) {
	const literal = "\n    - name: literal\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
	after := strings.Replace(bumpTrustedDNSPolicy, "default: deny", "mode: audit\n  default: deny", 1) + literal
	if after == bumpTrustedDNSPolicy+literal {
		t.Fatal("the audit policy is the enforcing one")
	}
	_, get, reload, end := nameCheckRig(t, bumpAnyDNSPolicy+literal, after, "127.0.0.1")
	if code := get("/before"); code != http.StatusOK {
		t.Fatalf("before the reload: %d", code)
	}
	reload()
	if code := get("/after"); code != http.StatusOK {
		t.Fatalf("after the reload: %d, want 200: audited", code)
	}
	tlsRec := end()
	if tlsRec.DestCheck != "mismatch" || tlsRec.Result != "ok" || !strings.Contains(tlsRec.Error, "no address of allowed.example could be looked up") ||
		strings.Contains(tlsRec.Error, "was denied after a policy reload") {
		t.Errorf("the tls record: dest_check %q result %q error %q; want mismatch, ok, the check's error, no denial: audited", tlsRec.DestCheck, tlsRec.Result, tlsRec.Error)
	}
}
