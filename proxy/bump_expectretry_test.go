package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestBumpExpectAfterSilentCloseSentAgain: a bumped HTTP/1 client's
// "Expect: 100-continue" request, sent on a kept upstream connection the
// origin closes without answering as its head arrives (an origin ending
// an idle keep-alive connection: legal, RFC 9112 §9.5), goes again on a
// new connection when it may go twice (a PUT, a POST with an idempotency
// key): the client gets the new connection's 100, sends its
// body once, and gets the origin's 200. One record, ok, its bytes_out the
// whole body. Before, the client got a 502 ("the upstream closed the
// connection before answering"), though nothing of its body had been
// read, while a GET in its place went again and was answered (a soak
// review: 10 of 10 such POSTs and PUTs failed).
func TestBumpExpectAfterSilentCloseSentAgain(t *testing.T) {
	const tries = 3
	body := strings.Repeat("B", 1000)
	// Not a POST without a key: an origin may have acted on its head, and
	// a proxy must not retry it (RFC 9110 §9.2.2; h1retry.go).
	for _, name := range []string{"PUT", "POST with an Idempotency-Key"} {
		t.Run(name, func(t *testing.T) {
			method, _, keyed := strings.Cut(name, " ")
			key := ""
			if keyed {
				key = "Idempotency-Key: k1\r\n"
			}
			r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 5 * time.Second,
				handler: func(_ *bumpStallRig, w http.ResponseWriter, req *http.Request) {
					n, _ := io.Copy(io.Discard, req.Body)
					if req.URL.Path != "/first" {
						fmt.Fprint(w, n) // what the origin read of the body
						return
					}
					// Answer, and end the connection as the next head
					// comes, without a word.
					c, bw, err := w.(http.Hijacker).Hijack()
					if err != nil {
						return
					}
					defer c.Close()
					io.WriteString(bw, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					bw.Flush()
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					http.ReadRequest(bw.Reader)
				}})
			for i := range tries {
				_, c := r.dialRawTLS(t, "http/1.1")
				c.SetDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(c)
				io.WriteString(c, "GET /first HTTP/1.1\r\nHost: big.example\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("try %d: /first: %v", i, err)
				}
				io.ReadAll(resp.Body)
				fmt.Fprintf(c, "%s /second HTTP/1.1\r\nHost: big.example\r\n%sContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", method, key, len(body))
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("try %d: /second: %v", i, err)
				}
				if resp.StatusCode != http.StatusContinue {
					got, _ := io.ReadAll(resp.Body)
					t.Fatalf("try %d: /second answered %d %q, want 100 Continue then 200", i, resp.StatusCode, got)
				}
				io.WriteString(c, body)
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("try %d: /second after its body: %v", i, err)
				}
				got, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusOK || string(got) != fmt.Sprint(len(body)) {
					t.Errorf("try %d: /second answered %d %q, want 200 %q", i, resp.StatusCode, got, fmt.Sprint(len(body)))
				}
				c.Close()
			}
			var second []records.Record
			for end := time.Now().Add(5 * time.Second); len(second) < tries && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				second = second[:0]
				for _, rec := range r.sink.parse(t) {
					if rec.Kind == "http" && rec.Path == "/second" {
						second = append(second, rec)
					}
				}
			}
			if len(second) != tries {
				t.Fatalf("%d records of /second, want %d", len(second), tries)
			}
			for _, rec := range second {
				if rec.Result != "ok" || rec.Status != http.StatusOK || rec.BytesOut != int64(len(body)) {
					t.Errorf("record %s %s status %d bytes_out %d %q, want ok 200 and %d", rec.Method, rec.Path, rec.Status, rec.BytesOut, rec.Error, len(body))
				}
			}
		})
	}
}
