package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestDenyRecordBeforeLinger: a cleartext first request to a denied host
// (a GET, and a POST whose body is still coming) gets its 403, and the
// client then stays quiet with its connection open, as a keep-alive
// client that has not yet read the FIN does. The deny record is written
// at once, as docs/records.md says of every answer the appliance gives
// itself: the linger that keeps the 403 from being reset (up to 2 s,
// reading what the client still sends) is no part of the request.
func TestDenyRecordBeforeLinger(t *testing.T) {
	for name, req := range map[string]string{
		"get":  "GET /a HTTP/1.1\r\nHost: evil.example.test\r\n\r\n",
		"post": "POST /a HTTP/1.1\r\nHost: evil.example.test\r\nContent-Length: 100000\r\n\r\nabc",
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
			c, _ := r.connectTCP(o.conn(), httpDest)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("answer %v, %v: want 403", resp, err)
			}
			rec := awaitRecord(t, r, "/a", time.Second) // the linger lasts 2 s
			if rec == nil {
				t.Fatal("no record within 1 s of the 403 (client quiet, connection open)")
			}
			if rec.Action != "deny" || rec.Status != http.StatusForbidden || rec.Result != "denied" {
				t.Fatalf("record %s %d %s, want deny 403 denied", rec.Action, rec.Status, rec.Result)
			}
		})
	}
}
