package intercept

import (
	"errors"
	"net/http"
)

// Which requests h1Transport sends again, on a new connection, when a
// kept one failed them.

var (
	// errNoAnswer: the upstream closed the connection, or would take no
	// request on it, before answering. On a kept connection that is an
	// upstream ending an idle connection, and an idempotent request, or
	// one whose held body was never read, may go again.
	errNoAnswer = errors.New("the upstream closed the connection before answering")
	// errNothingWritten: writing the request failed before any of it
	// left; any request without a body may go again.
	errNothingWritten = errors.New("the request could not be sent")
)

// bodyless reports whether req has no body to send.
func bodyless(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody
}

// retryable reports whether req, which failed with err on a kept
// connection, may go again on a new one: net/http's rule, and a request
// whose body waited for a 100 that never came. A request with a body
// read (even in part) cannot go again: what was read is gone. Without a
// body, it goes again when nothing of it left, or when the upstream
// closed the connection without answering and the request is
// idempotent: it may have acted on one that is not.
//
// held: the request asked for "100 Continue" and its body was kept back,
// not one byte of it read from the client, who sends it only once told
// to (expect.go). When the upstream then closed the connection without
// any answer, a 1xx or a final one (errNoAnswer: on a kept connection,
// an upstream ending it as idle as the head went out), the request goes
// again if its method is idempotent (RFC 9110 §9.2.2: PUT and DELETE
// too, the methods an SDK sends with the expectation), or an
// idempotency key says it may: else the client got a 502 for a request
// no origin refused, and it had not sent its body. Not a POST without a
// key: an origin may have acted on its head (the target, the headers)
// and failed before it answered, and RFC 9110 §9.2.2 says a proxy MUST
// NOT retry a non-idempotent request on its own; its client gets the
// 502, and decides.
func retryable(req *http.Request, err error, held bool) bool {
	if req.Context().Err() != nil {
		return false
	}
	if held {
		return errors.Is(err, errNoAnswer) && idempotentMethod(req)
	}
	if !bodyless(req) {
		return false
	}
	if errors.Is(err, errNothingWritten) {
		return true
	}
	return errors.Is(err, errNoAnswer) && idempotent(req)
}

// idempotent reports whether req may be sent twice (RFC 9110 §9.2.2), or
// says so with the widely used Idempotency-Key header, as net/http
// decides it.
func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// idempotentMethod reports whether req's method is idempotent (RFC 9110
// §9.2.2: the safe methods, PUT and DELETE), or an idempotency key says
// the request is. Wider than idempotent, net/http's set for a bodyless
// request, which leaves out PUT and DELETE: for a held body the retry is
// the appliance's own, within what the RFC allows a proxy.
func idempotentMethod(req *http.Request) bool {
	switch req.Method {
	case http.MethodPut, http.MethodDelete:
		return true
	}
	return idempotent(req)
}
