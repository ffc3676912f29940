package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestEarlyChunkedAnswerTrailerEnds: the origin answers a POST at once
// with a chunked 401 that has a trailer, and reads nothing; the client,
// as curl does, stops its upload and waits for the answer's end. It must
// have the whole answer, trailer included, at once (within half the
// drain's 2 s), whatever the upload's framing; then the record (401, ok,
// the rest of the body not read) and the connection's end. Before,
// net/http's Response.Write wrote the trailer and the last CRLF only
// after closing the response body, whose close read the rest of the
// request body first: a Content-Length upload's end never came, and a
// chunked one's 2 s later, while the record already said ok. Cleartext
// and bumped.
func TestEarlyChunkedAnswerTrailerEnds(t *testing.T) {
	for _, tc := range []struct{ name, framing, body, notRead string }{
		{"content-length", "Content-Length: 1000000", "abc", "more than 256 KiB after the response"},
		{"chunked", "Transfer-Encoding: chunked", "3\r\nabc\r\n", "not ended 2s after the response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleartextAndBumped(t, func(t *testing.T, bumped bool) {
				o := &earlyOrigin{t: t, status: http.StatusUnauthorized, chunkedAnswer: true, trailer: "X-Why: no"}
				r := newRig(t, testPolicy)
				c, action := chunkClient(t, r, o, bumped)
				io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\n"+tc.framing+"\r\n\r\n"+tc.body)
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
				if err != nil {
					t.Fatalf("no early answer: %v", err)
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				b, err := io.ReadAll(resp.Body)
				if err != nil || string(b) != "large" || resp.Trailer.Get("X-Why") != "no" {
					t.Fatalf("answer's body %q, trailer %v, %v: want all of it, at once", b, resp.Trailer, err)
				}
				rec := awaitRecord(t, r, "/a", 4*time.Second)
				if rec == nil {
					t.Fatal("no record 4 s after the answer")
				}
				checkNotRead(t, rec, action, http.StatusUnauthorized, tc.notRead)
				expectClosed(t, c, br, 3*time.Second)
			})
		})
	}
}
