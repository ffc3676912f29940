package intercept

import (
	"errors"
	"io"
	"net/http"
	"sync/atomic"
)

// A chunked HTTP/1 request body whose framing breaks.
//
// Past a chunk net/http cannot read, what the client sent is no request
// (RFC 9112 §7.1): serving it as one is how a request is smuggled behind
// another. When the framing error is known before the response head goes
// out, the client gets a 400 and its connection closes
// (refuseMalformedBody). But the destination may answer before it has read
// the body (an early 401 or 413, or one that ignores bodies): the round
// trip then succeeds, and the bad chunk is found afterwards, by the
// transport's writer still sending the body or by the drain of the rest
// of it once the response has ended. goproxy's HTTP/1 loop then read what
// followed the bad chunk as the next request, decided, relayed and
// recorded it, while the first request's record said ok.
//
// faultBody catches that error whenever it comes, on whichever read, and
// marks the client connection (hijackedConn.bodyFault). From then on
// nothing of the connection is served: the response under way ends with
// the connection (nextHead sets its Close, so goproxy's loop stops), the
// connection's reads end (readConn), and a head goproxy had buffered
// already is refused unserved and unrecorded (RoundTrip). The request's
// record keeps the status the client got, with result error and the
// body's fault (roundTrip's rb.done, which reads the body to its end or
// its fault before it writes the record).
type faultBody struct {
	io.ReadCloser
	cc    *hijackedConn
	fault atomic.Pointer[error]
}

// errAfterBodyFault ends goproxy's loop at a head it read after a body
// whose framing broke.
var errAfterBodyFault = errors.New("a request head after a chunked body that could not be read: not served")

// watchBodyFault wraps req's body, a chunked HTTP/1 one, in a faultBody;
// any other body is left as it is. It returns the faultBody, or nil.
func watchBodyFault(req *http.Request, cc *hijackedConn) *faultBody {
	if inH2Handler(req) || len(req.TransferEncoding) != 1 || req.TransferEncoding[0] != "chunked" ||
		bodyless(req) {
		return nil
	}
	fb := &faultBody{ReadCloser: req.Body, cc: cc}
	req.Body = fb
	return fb
}

func (b *faultBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.note(err)
	}
	return n, err
}

// Close reads what is left of the body to its end, as net/http's body
// does (it is goproxy's, read by http.ReadRequest), which finds a framing
// error in what the destination never read.
func (b *faultBody) Close() error {
	err := b.ReadCloser.Close()
	if err != nil {
		b.note(err)
	}
	return err
}

// note keeps err when it is net/http's chunked reader's: a body whose
// framing broke, not one the client stopped sending.
func (b *faultBody) note(err error) {
	if !containsAny(err.Error(), chunkedBodyErrors) {
		return
	}
	b.fault.CompareAndSwap(nil, &err)
	b.cc.bodyFault.CompareAndSwap(nil, &err)
}

// drain reads the rest of the body (Close) and returns its framing
// error, if it had one; b may be nil.
func (b *faultBody) drain() error {
	if b == nil {
		return nil
	}
	_ = b.Close()
	if p := b.fault.Load(); p != nil {
		return *p
	}
	return nil
}
