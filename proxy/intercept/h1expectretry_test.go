package intercept

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// watchedBody is a request body that counts what was read of it and
// whether it was closed.
type watchedBody struct {
	r      io.Reader
	read   atomic.Int64
	closed atomic.Bool
}

// wantRead checks that want bytes of the body were read from the client,
// and that the transport counted as many sent (bs).
func (b *watchedBody) wantRead(t *testing.T, bs *bodySent, want int64) {
	t.Helper()
	if n := b.read.Load(); n != want {
		t.Errorf("%d bytes read of the client's body, want %d", n, want)
	}
	if n := bs.n.Load(); n != want {
		t.Errorf("counted %d body bytes sent, want %d", n, want)
	}
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func (b *watchedBody) Close() error {
	b.closed.Store(true)
	return nil
}

// expectReq returns a request of method with an "Expect: 100-continue"
// body of size bytes, counted into the returned bodySent.
func expectReq(t *testing.T, method string, size int) (*http.Request, *watchedBody, *bodySent) {
	t.Helper()
	body := &watchedBody{r: strings.NewReader(strings.Repeat("B", size))}
	req := newReq(t, method, "http://a.example/upload", nil)
	req.Body, req.ContentLength = body, int64(size)
	req.Header.Set("Expect", "100-continue")
	bs := &bodySent{}
	return withBodySent(req, bs), body, bs
}

// expectAnswer reads the rest of an "Expect: 100-continue" request on c,
// asking for its body, and answers with the number of body bytes read.
func expectAnswer(c net.Conn, req *http.Request) int64 {
	io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
	n, _ := io.Copy(io.Discard, req.Body)
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d", len(fmt.Sprint(n)), n)
	return n
}

// TestH1ExpectResentBeforeBody: a request whose body waits for "100
// Continue", sent on a kept connection the upstream then closes without
// answering (as it ends an idle keep-alive connection, legally, just as
// the head goes out), goes again on a new connection when it may go
// twice (an idempotent method, or an idempotency key; a POST without one
// does not: TestH1ExpectNonIdempotentNotResent): nothing of its body was
// read from the client, who sends it
// after the new connection's 100. The whole body reaches the upstream
// once, and bytes_out counts it once. Before, any request with a body
// failed there (a 502 to the client), though not a byte of it had left.
func TestH1ExpectResentBeforeBody(t *testing.T) {
	const size = 1000
	for _, name := range []string{"PUT", "DELETE", "POST with an Idempotency-Key"} {
		t.Run(name, func(t *testing.T) {
			method, _, keyed := strings.Cut(name, " ")
			var mu sync.Mutex
			var got []string
			dial := h1Server(t, func(n int, c net.Conn) {
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					mu.Lock()
					got = append(got, fmt.Sprintf("%d %s %s", n, req.Method, req.URL.Path))
					mu.Unlock()
					switch {
					case req.Method == "GET":
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					case n == 0:
						return // the head came as the kept connection was ended
					default:
						mu.Lock()
						got = append(got, fmt.Sprintf("%d body %d", n, expectAnswer(c, req)))
						mu.Unlock()
					}
				}
			})
			tr := &h1Transport{dial: dial}
			defer tr.CloseIdleConnections()
			get(t, tr, "GET", "/warmup")
			req, body, bs := expectReq(t, method, size)
			if keyed {
				req.Header.Set("Idempotency-Key", "k1")
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatalf("%s with its body held for a 100, on a kept connection the upstream closed: %v", method, err)
			}
			if answer := readBody(t, resp.Body); answer != fmt.Sprint(size) {
				t.Errorf("the upstream read %s body bytes, want %d", answer, size)
			}
			body.wantRead(t, bs, size)
			mu.Lock()
			defer mu.Unlock()
			want := []string{"0 GET /warmup", "0 " + method + " /upload", "1 " + method + " /upload", fmt.Sprintf("1 body %d", size)}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("the upstream took %q, want %q", got, want)
			}
		})
	}
}

// TestH1ExpectNotResentAfterBodyRead: once any of a held body has been
// let go (the upstream's 100 came, or expectContinueTimeout passed
// without one), a request the kept connection then fails is not sent
// again: what was read of the client's body is gone. The body is
// closed, and bytes_out counts what left.
func TestH1ExpectNotResentAfterBodyRead(t *testing.T) {
	const size = 1000
	for _, tc := range []struct {
		name  string
		sends bool // the upstream sends its 100, else the wait runs out
	}{{"after the upstream's 100", true}, {"after the wait for a 100", false}} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.sends {
				old := expectContinueTimeout.Load()
				expectContinueTimeout.Store(50 * time.Millisecond)
				defer expectContinueTimeout.Store(old)
			}
			var conns atomic.Int32
			dial := h1Server(t, func(n int, c net.Conn) {
				conns.Add(1)
				answerGETs(c, func(req *http.Request) {
					if tc.sends {
						io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
					}
					io.Copy(io.Discard, req.Body) // the body read, and no answer
				})
			})
			tr := &h1Transport{dial: dial}
			defer tr.CloseIdleConnections()
			get(t, tr, "GET", "/warmup")
			req, body, bs := expectReq(t, "PUT", size)
			resp, err := tr.RoundTrip(req)
			if err == nil {
				readBody(t, resp.Body)
				t.Fatalf("answered %d, want an error: the body was read, and cannot go again", resp.StatusCode)
			}
			if n := conns.Load(); n != 1 {
				t.Errorf("%d upstream connections, want 1: the request went again", n)
			}
			body.wantRead(t, bs, size)
			if !body.closed.Load() {
				t.Error("the body was not closed")
			}
		})
	}
}

// TestH1ExpectHeldBodyClosed: a held body is closed by the transport when
// it does not go again: after an answer that came before the upstream's
// 100 (its gate leaves the close to the transport), and after a new
// connection, whose failure is no idle close, ended without an answer.
// Nothing of it is read.
func TestH1ExpectHeldBodyClosed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer bool // a 413 at once, else the connection's end
	}{{"early answer", true}, {"new connection closed", false}} {
		t.Run(tc.name, func(t *testing.T) {
			var conns atomic.Int32
			dial := h1Server(t, func(n int, c net.Conn) {
				conns.Add(1)
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				if tc.answer {
					io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				}
			})
			tr := &h1Transport{dial: dial}
			defer tr.CloseIdleConnections()
			req, body, bs := expectReq(t, "POST", 1000)
			resp, err := tr.RoundTrip(req)
			switch {
			case tc.answer && err != nil:
				t.Fatalf("the early answer: %v", err)
			case tc.answer:
				readBody(t, resp.Body)
			case err == nil:
				readBody(t, resp.Body)
				t.Fatalf("answered %d, want an error", resp.StatusCode)
			}
			if n := conns.Load(); n != 1 {
				t.Errorf("%d upstream connections, want 1", n)
			}
			body.wantRead(t, bs, 0)
			if !body.closed.Load() {
				t.Error("the body was not closed")
			}
		})
	}
}

// answerGETs serves c as an upstream: it answers each GET "ok" and hands
// the first other request to other, after which it serves no more.
func answerGETs(c net.Conn, other func(*http.Request)) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.Method != "GET" {
			other(req)
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}
