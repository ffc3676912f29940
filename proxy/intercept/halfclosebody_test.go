package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestHalfCloseMidBodyGets400: a client half-closes (a FIN; over TLS a
// close_notify) in the middle of its request body, of a Content-Length or
// chunked, before any answer, and keeps reading; the origin reads the
// body. As for an HTTP/2 stream that ends short of its content-length,
// the client must get a 400 and its connection close, and the record say
// so: status 400, result error, "malformed request body: unexpected EOF".
// Before, the client got a 502 "the client went away", and the record no
// status, result reset, and that the client went away. Cleartext and
// bumped.
func TestHalfCloseMidBodyGets400(t *testing.T) {
	for _, tc := range []struct{ name, framing, body string }{
		{"content-length", "Content-Length: 100", string(make([]byte, 50))},
		{"chunked", "Transfer-Encoding: chunked", "3\r\nabc\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleartextAndBumped(t, func(t *testing.T, bumped bool) {
				o := &earlyOrigin{t: t, readFirst: true}
				r := newRig(t, testPolicy)
				c, action := chunkClient(t, r, o, bumped)
				io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\n"+tc.framing+"\r\n\r\n"+tc.body)
				if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("answer %d %q, want 400", resp.StatusCode, b)
				}
				expectClosed(t, c, br, time.Second)
				rec := awaitRecord(t, r, "/a", time.Second)
				const want = "malformed request body: unexpected EOF"
				if rec == nil || rec.Action != action || rec.Status != http.StatusBadRequest || rec.Result != "error" || rec.Error != want {
					t.Errorf("record %+v, want %s 400 error %q", rec, action, want)
				}
			})
		})
	}
}
