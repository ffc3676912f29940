package intercept

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
)

// TestH1ExpectNonIdempotentNotResent: a POST whose body waited for "100
// Continue", sent on a kept connection the upstream then closed without
// answering, went again on a new connection: an origin that acted on the
// head (the action in its target) before it closed acted twice. RFC 9110
// §9.2.2: a proxy MUST NOT automatically retry non-idempotent requests.
// Now it fails (the client gets a 502), once, its body closed unread.
func TestH1ExpectNonIdempotentNotResent(t *testing.T) {
	var acted, conns atomic.Int32
	dial := h1Server(t, func(n int, c net.Conn) {
		conns.Add(1)
		answerGETs(c, func(*http.Request) {
			acted.Add(1) // POST /upload?amount=100: done on the head
			if n == 0 {
				return // it closes before answering
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		})
	})
	tr := &h1Transport{dial: dial}
	defer tr.CloseIdleConnections()
	get(t, tr, "GET", "/warmup")
	req, body, bs := expectReq(t, "POST", 10)
	req.URL.RawQuery = "amount=100"
	resp, err := tr.RoundTrip(req)
	if err == nil {
		readBody(t, resp.Body)
		t.Errorf("the POST was answered %d, want its failure (a 502 to the client)", resp.StatusCode)
	}
	if n := acted.Load(); n != 1 {
		t.Errorf("the origin acted on the POST %d times: the proxy sent it again on its own", n)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
	body.wantRead(t, bs, 0)
	if !body.closed.Load() {
		t.Error("the body was not closed")
	}
}

// TestH1ExpectHeldBodyClosedWhenRetryDialFails: a held body whose request
// went again on a new connection was left open when that connection's
// dial failed: RoundTrip must close the request body on every path.
func TestH1ExpectHeldBodyClosedWhenRetryDialFails(t *testing.T) {
	var dials atomic.Int32
	inner := h1Server(t, func(n int, c net.Conn) {
		answerGETs(c, func(*http.Request) {}) // the kept connection ended as the head went out
	})
	dial := func(ctx context.Context) (net.Conn, error) {
		if dials.Add(1) > 1 {
			return nil, errors.New("test: dial refused")
		}
		return inner(ctx)
	}
	tr := &h1Transport{dial: dial}
	defer tr.CloseIdleConnections()
	get(t, tr, "GET", "/warmup")
	req, body, _ := expectReq(t, "PUT", 10)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		readBody(t, resp.Body)
		t.Fatalf("answered %d, want the retry's dial error", resp.StatusCode)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2 (the retry's failed)", n)
	}
	if !body.closed.Load() {
		t.Error("the held body was not closed after the retry's dial failed")
	}
}
