package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHostlessTargetRefused: request targets that are neither a path nor
// an http(s) URL with a host (a scheme alone, an empty or missing
// authority, another scheme) are answered 400 with a deny record and
// nothing sent, as docs/policy.md says such targets are. Before, only
// targets with an opaque part ("x:http://evil/secret") were refused; these
// went upstream as "GET /" or "GET /path", the record's path empty.
func TestHostlessTargetRefused(t *testing.T) {
	targets := []string{"x:", "http:", "https://", "http:/path", "http:///path", "http://@/x",
		"ftp://www.example.test/path", "ws://www.example.test/path"}
	for _, bumped := range []bool{true, false} {
		for _, target := range targets {
			t.Run(map[bool]string{true: "bumped ", false: "cleartext "}[bumped]+target, func(t *testing.T) {
				r := newRig(t, allowOnlyWWW)
				c, sv, up := connectWWW(t, r, bumped)
				wantRefused(t, c, sv, up, "GET "+target+" HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
				recs := ofKind(r.records(), "http")
				if len(recs) != 1 || recs[0].Action != "deny" || recs[0].Status != http.StatusBadRequest || recs[0].Rule != "" ||
					!strings.Contains(recs[0].Error, "neither a path nor an http(s) URL") {
					t.Errorf("http records %+v, want one deny with the 400, no rule, saying why", recs)
				}
			})
		}
	}
}

// TestAsteriskOnlyForOptions: "*" with a method other than OPTIONS
// ("GET *", "DELETE *", "POST *" with a body) is refused like the other
// targets that are not a path: 400, a deny record, nothing sent. RFC 9112
// §3.2.4 allows the asterisk-form for OPTIONS only. Before, they went to
// the destination as "GET *" and so on, recorded allowed with path "*",
// a target an origin or a middlebox behind it may route as it likes.
func TestAsteriskOnlyForOptions(t *testing.T) {
	for _, bumped := range []bool{true, false} {
		for _, head := range []string{
			"GET * HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
			"DELETE * HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
			"POST * HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 5\r\n\r\nhello",
		} {
			t.Run(map[bool]string{true: "bumped ", false: "cleartext "}[bumped]+firstLine(head), func(t *testing.T) {
				r := newRig(t, allowOnlyWWW)
				c, sv, up := connectWWW(t, r, bumped)
				wantRefused(t, c, sv, up, head)
				recs := ofKind(r.records(), "http")
				if len(recs) != 1 || recs[0].Action != "deny" || recs[0].Status != http.StatusBadRequest || recs[0].Rule != "" ||
					recs[0].BytesOut != 0 || !strings.Contains(recs[0].Error, "for OPTIONS only") {
					t.Errorf("http records %+v, want one deny with the 400, no rule, nothing sent, saying why", recs)
				}
			})
		}
	}
}

// TestOptionsAsteriskKept: "OPTIONS *" (a request for the server as a
// whole) reaches the destination as "OPTIONS *", and its record's path is
// "*". Before, goproxy's rebuilt URL made it "OPTIONS /", a request for
// the resource "/", with the record's path empty.
func TestOptionsAsteriskKept(t *testing.T) {
	for _, bumped := range []bool{true, false} {
		r := newRig(t, testPolicy)
		c, sv, o := connectHTTP1(t, r, bumped)
		c.SetDeadline(time.Now().Add(waitLimit))
		io.WriteString(c, "OPTIONS * HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		c.Close()
		sv.waitDoneOnce(t)
		got := o.got()
		if len(got) != 1 || !strings.HasPrefix(got[0], "OPTIONS * HTTP/1.1\r\n") {
			t.Errorf("bumped %v: the destination got %q, want OPTIONS *", bumped, got)
		}
		recs := ofKind(r.records(), "http")
		if len(recs) != 1 || recs[0].Path != "*" || recs[0].Method != "OPTIONS" {
			t.Errorf("bumped %v: http records %+v, want one, OPTIONS, path *", bumped, recs)
		}
	}
}
