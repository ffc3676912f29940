package intercept

import (
	"errors"
	"io"
	"net/http"
	"sync"
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
//
// Any error reading the body but its end counts, not only the chunked
// reader's: past any of them the framing is lost (a trailer net/http
// refuses leaves what follows it unread, a request head among it). The
// record names a framing error (chunkedBodyErrors) a malformed body, and
// any other the client's going away (roundTrip's rb.done).
type faultBody struct {
	io.ReadCloser
	cc *hijackedConn
	// mu holds a read and its note together, and a close: net/http's
	// body, after a trailer it refuses, closes itself inside the read
	// that returns the error, and a later Close returns nil. Without mu,
	// a Close (nextHead's, drain's) taken between that read's return and
	// its note would see no fault, and goproxy would go on to the next
	// head. With it the note happens before the Close returns. A close
	// waited for a read under way already (net/http's body has its own
	// lock), so mu adds no wait.
	mu    sync.Mutex
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
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.ReadCloser.Read(p)
	b.note(err)
	return n, err
}

// Close reads what is left of the body to its end, as net/http's body
// does (it is goproxy's, read by http.ReadRequest), which finds a framing
// error in what the destination never read.
func (b *faultBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.ReadCloser.Close()
	b.note(err)
	return err
}

// note keeps err, the first error reading the body other than its end;
// b.mu is held. A read after a close (the transport's writer, once the
// body was drained) is no fault of the body's: its end, or its fault,
// was seen by the close.
func (b *faultBody) note(err error) {
	if err == nil || err == io.EOF || errors.Is(err, http.ErrBodyReadAfterClose) {
		return
	}
	b.fault.CompareAndSwap(nil, &err)
	b.cc.bodyFault.CompareAndSwap(nil, &err)
}

// drain reads the rest of the body (Close) and returns the error that
// broke it, if one did; b may be nil.
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

// malformedBody reports whether err, a request body's, is a framing
// error of its own (net/http's words for it), not the client's going
// away: the record calls the body malformed.
func malformedBody(err error) bool {
	return containsAny(err.Error(), chunkedBodyErrors)
}
