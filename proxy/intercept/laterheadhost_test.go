package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestLaterUnreadableHeadRecordsNoHost: the record of a later head on a
// kept-alive connection that cannot be read (malformed), or that was left
// unfinished past its deadline, named the Host of the cleartext
// connection's first request: a deny of an allowed name the refused head
// never carried, while a bumped connection's said none. Now neither names
// a host, as neither names a method or path: the head was never read.
func TestLaterUnreadableHeadRecordsNoHost(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetRequestHeadTimeout(timeout)()
	for _, tc := range []struct {
		name    string
		bumped  bool
		head    string
		result  string
		errText string
	}{
		{"cleartext malformed", false, "GET /x HTTP/1.1\r\nHost: evil.example.test\r\nNo colon here\r\n\r\n", "denied", "no request could be read"},
		{"bumped malformed", true, "GET /x HTTP/1.1\r\nHost: evil.example.test\r\nNo colon here\r\n\r\n", "denied", "no request could be read"},
		{"cleartext timed out", false, "GET /x HTTP/1.1\r\nHost: evil.example.test\r\nX-P: ppp", "timeout", "request head not complete"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			c, sv, _ := connectHTTP1(t, r, tc.bumped)
			c.SetDeadline(time.Now().Add(waitLimit))
			br := bufio.NewReader(c)
			io.WriteString(c, "GET /first HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			io.WriteString(c, tc.head)
			io.Copy(io.Discard, br) // until the appliance closes
			c.Close()
			sv.waitDoneOnce(t)
			var found bool
			for _, rec := range ofKind(r.records(), "http") {
				if rec.Path == "/first" {
					continue
				}
				found = true
				if rec.Result != tc.result || !strings.Contains(rec.Error, tc.errText) ||
					rec.Host != "" || rec.Method != "" || rec.Path != "" {
					t.Errorf("the later head's record %+v; want result %s, error %q, and no host, method or path", rec, tc.result, tc.errText)
				}
			}
			if !found {
				t.Error("no record of the later head")
			}
		})
	}
}
