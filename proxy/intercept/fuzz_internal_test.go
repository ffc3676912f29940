package intercept

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// Fuzz targets for what proxy/intercept parses from a client's bytes: the
// boundaries of HTTP/1 requests (h1bounds.go, chunks.go) here, HTTP/2
// frames and header blocks (h2limit.go, h2guard.go) in
// fuzzh2_internal_test.go. Each is driven as hijackedConn drives it, with
// the bytes split at points the fuzzer chooses.

// fuzzConn is a client connection for the fuzz targets: its reads hand out
// data in pieces whose sizes come from sizes (1 to 256 bytes each, then
// the rest at once), then io.EOF, with the last piece when eofWithLast
// (a read may return bytes and an error together). What is written to it
// is kept in out. Deadlines are accepted and never fire.
type fuzzConn struct {
	data        []byte
	sizes       []byte
	eofWithLast bool
	out         bytes.Buffer
}

func (c *fuzzConn) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.sizes) > 0 {
		n = min(n, 1+int(c.sizes[0]))
		c.sizes = c.sizes[1:]
	}
	n = copy(b, c.data[:n])
	c.data = c.data[n:]
	if len(c.data) == 0 && c.eofWithLast {
		return n, io.EOF
	}
	return n, nil
}

func (c *fuzzConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

type readFunc func([]byte) (int, error)

func (f readFunc) Read(b []byte) (int, error) { return f(b) }

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}

// h1Span is where net/http found a request's head and body to end, as
// offsets into the connection's bytes; end is -1 when it read no end of
// the body (it refused it, or the bytes ran out). bareLF: a chunked body
// whose trailer net/http ended at a bare line feed before a CRLF CRLF,
// which the boundaries read up to that CRLF CRLF, by design (chunks.go):
// from there on they may be lost, never a byte.
type h1Span struct {
	head, end int
	bareLF    bool
}

// h1Reference reads data as goproxy's HTTP/1 loop does, with no bounds in
// the way, one request at a time (next), and says where each ended.
// Buffered readers make of a stream the same requests however it is cut
// into reads, so these are the ends the bounded loop must find too.
type h1Reference struct {
	data   []byte
	src    *countReader
	r1, r2 *bufio.Reader
	spans  []h1Span
	done   bool // the last request read was the last one there is
}

func newH1Reference(data []byte) *h1Reference {
	src := &countReader{r: bytes.NewReader(data)}
	r1 := bufio.NewReader(src)
	return &h1Reference{data: data, src: src, r1: r1, r2: bufio.NewReader(readFunc(r1.Read))}
}

func (r *h1Reference) pos() int { return r.src.n - r.r1.Buffered() - r.r2.Buffered() }

// span returns the ith request's span, reading on up to it: before each
// later request i, when drop(i) (the boundaries armed their drop at the
// end of the one before: skipLead), up to maxLeadingEmpty CR or LF bytes
// are dropped first, as net/http's server drops them. false when data
// holds no ith request that can be read.
func (r *h1Reference) span(i int, drop func(int) bool) (h1Span, bool) {
	for len(r.spans) <= i && !r.done {
		if len(r.spans) > 0 && drop(len(r.spans)) {
			lead, _ := r.r2.Peek(maxLeadingEmpty)
			k := 0
			for k < len(lead) && (lead[k] == '\r' || lead[k] == '\n') {
				k++
			}
			_, _ = r.r2.Discard(k)
		}
		if _, err := r.r2.Peek(1); err != nil {
			r.done = true
			break
		}
		req, err := http.ReadRequest(r.r2)
		if err != nil {
			r.done = true
			break
		}
		s := h1Span{head: r.pos(), end: -1}
		_, err = io.Copy(io.Discard, req.Body)
		if err == nil {
			s.end = r.pos()
			chunked := len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked"
			if chunked && !bytes.HasSuffix(r.data[s.head:s.end], []byte("\r\n\r\n")) {
				s.bareLF = true
			}
		}
		r.spans = append(r.spans, s)
		r.done = err != nil
	}
	if i < len(r.spans) {
		return r.spans[i], true
	}
	return h1Span{}, false
}

// h1Seeds are the shapes of the HTTP/1 tests' requests: heads ending in
// each way net/http ends them, folded fields, bodies of a known length,
// chunked bodies with extensions and trailers, sizes past int64, and
// bodies net/http refuses.
var h1Seeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\n\r\n",
	"GET / HTTP/1.1\nHost: a\r\n\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: b\r\n c\r\n\r\n",
	"GET /e HTTP/1.1\nHost: a\nX: b\n c\n\n",
	"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nworld",
	"POST /d HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nxy",
	"POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"POST /g HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"1;ext=\"a\\\"b\"\r\nx\r\n00000000000000a \t\r\n0123456789\r\nA;\r\n" + strings.Repeat("y", 10) + "\r\n0\r\n\r\n",
	"POST /i HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\r\n\r\r\n0\r\nX-T: 1\r\nX-U: \r\n 2\r\n\r\n",
	"PUT /j HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n4\r\n\r\n\r\n\r\n0;last\r\nX: \r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\nGET /in-trailer HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat("0", 4100) + "\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: " + strings.Repeat("t", 4100) + "\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
	"PRI * HTTP/2.0\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nXGET / HTTP/1.1\r\n\r\n",
}

// FuzzH1Bounds reads a client's bytes through the boundaries of HTTP/1
// requests as goproxy's HTTP/1 loop does (hijackedConn.readConn under two
// 4 KiB buffered readers, http.ReadRequest, RoundTrip's bounds.request,
// the body drained, then awaitHead as the response body's close calls
// it), with the bytes cut into reads at points the fuzzer chooses. h2 has
// the connection start as one that negotiated h2 (the preface watched
// until a byte is not the preface's); skipAwait has the response to the
// requests whose bit it holds (the i%8th) end with no awaitHead, as a 101
// does, so that the next read is one past the request. Beyond no panic:
//   - the bytes handed out, and those dropped (skipLead), together and in
//     order, are the input's start, and all of it once a read returns an
//     error (nothing lost, reordered or duplicated), and no read returns
//     nothing while bytes are kept;
//   - bytes are dropped only after a request net/http ended where the
//     boundaries did (awaitHead in boundDone, never past a trailer
//     net/http ended at a bare LF), and only CR or LF bytes, the first up
//     to maxLeadingEmpty of those that follow that end;
//   - net/http reads the same requests, ending at the same offsets, as it
//     does with no bounds in the way (and those bytes dropped where the
//     boundaries dropped theirs, as net/http's server drops them);
//   - while the boundaries are not given up (boundLoose), no byte past the
//     end of the head or body net/http is reading is handed out, and a
//     head net/http read whole is one the bounds saw end (boundAwait)
//     (but past a trailer net/http ended at a bare LF, by design);
//   - the state, and a head's line state, are defined ones.
func FuzzH1Bounds(f *testing.F) {
	for i, s := range h1Seeds {
		next := h1Seeds[(i+1)%len(h1Seeds)]
		f.Add([]byte(s), []byte{}, false, false, uint8(0))
		f.Add([]byte(s+next), []byte{0, 3, 40, 255, 7, 1}, i%2 == 0, i%3 == 0, uint8(i))
		f.Add([]byte(s+"\r\n"+next), []byte{}, false, false, uint8(0))
	}
	for _, size := range hugeChunkSizes { // chunks_internal_test.go
		body := "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + size + "\r\nabcdefgh\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
		f.Add([]byte(body), []byte{60, 2, 2, 200}, false, false, uint8(0))
	}
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxGET"), []byte{0, 60}, true, false, uint8(0))
	f.Add([]byte("GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HT"), []byte{}, true, true, uint8(0))
	f.Add([]byte(http2.ClientPreface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00"), []byte{2, 5}, true, false, uint8(0))
	// Empty lines before a later head (skipLead): within a read, cut
	// across reads, more than are dropped, and behind a trailer net/http
	// ended at a bare LF, where they are the next request's body (kept).
	f.Add([]byte("GET /a HTTP/1.1\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), []byte{18, 0, 0, 2}, false, false, uint8(0))
	f.Add([]byte("GET /a HTTP/1.1\r\n\r\n\r\n\r\n\rGET /b HTTP/1.1\r\n\r\n"), []byte{}, false, true, uint8(0))
	f.Add([]byte("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nPOST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\nGET /c HTTP/1.1\r\n\r\n"),
		[]byte{}, false, false, uint8(0))
	f.Fuzz(func(t *testing.T, data, sizes []byte, h2, eofWithLast bool, skipAwait uint8) {
		fuzzH1Bounds(t, data, sizes, h2, eofWithLast, skipAwait)
	})
}

func fuzzH1Bounds(t *testing.T, data, sizes []byte, h2, eofWithLast bool, skipAwait uint8) {
	conn := &fuzzConn{data: data, sizes: sizes, eofWithLast: eofWithLast}
	c := &hijackedConn{Conn: conn, h1: !h2}
	h := &c.bounds
	ref := newH1Reference(data)
	// armed[i]: awaitHead, at the end of request i-1, armed the drop
	// before request i's head (it found the boundaries at boundDone).
	armed := map[int]bool{}
	drop := func(i int) bool { return armed[i] }
	var out []byte       // what the reads handed out
	pos := 0             // the input's bytes handed out or dropped
	limit := -1          // where net/http ends the head or body it is reading; -1: not known
	ended := false       // a read returned an error
	diverged := false    // past a trailer the boundaries read otherwise, by design
	dropFrom := -1       // where bytes may be dropped from: the end of a request awaitHead armed the drop after
	dropped := 0         // of them, how many were
	dropTake := func() { // count the bytes skipLead dropped since
		k := int(h.skipped) - (pos - len(out))
		if k == 0 {
			return
		}
		if dropFrom < 0 || pos < dropFrom || pos+k > dropFrom+maxLeadingEmpty || pos+k > len(data) {
			t.Fatalf("%d bytes dropped at %d: no request ended before them where the boundaries armed the drop (at %d) (input %q)", k, pos, dropFrom, data)
		}
		for _, b := range data[pos : pos+k] {
			if b != '\r' && b != '\n' {
				t.Fatalf("dropped %q at %d: not a CR or LF", data[pos:pos+k], pos)
			}
		}
		pos += k
		dropped += k
	}
	// A read may go past a request, giving the boundaries up: goproxy's
	// peek for the preface, after a head shorter than it; a response
	// with no awaitHead; a body of no known length. Else they follow
	// every request net/http reads.
	mayLoose := h2
	rd := readFunc(func(b []byte) (int, error) {
		kept := len(h.pending)
		n, err := c.readConn(b)
		dropTake() // dropped bytes come before those handed out
		if pos+n > len(data) || !bytes.Equal(b[:n], data[pos:pos+n]) {
			t.Fatalf("after %d bytes, handed out %q; the input goes on %q", pos, b[:n], data[pos:min(pos+n, len(data))])
		}
		out = append(out, b[:n]...)
		if pos += n; n > 0 {
			dropFrom = -1 // a head began: nothing more is dropped before it
		}
		if kept > 0 && n == 0 && len(b) > 0 {
			t.Fatalf("a read returned nothing (%v) with %d bytes kept", err, kept)
		}
		if err != nil {
			ended = true
			if len(h.pending) > 0 {
				t.Fatalf("a read returned %v with %d bytes kept", err, len(h.pending))
			}
		}
		checkH1State(t, h)
		if c.h1 && h.state != boundLoose && limit >= 0 && pos > limit {
			t.Fatalf("state %d: handed out up to %d, past the end of the part net/http reads, at %d (input %q)", h.state, pos, limit, data)
		}
		return n, err
	})
	// goproxy's readers: its peek for TLS, and for an h2 connection its
	// peek for the preface, on the first; its HTTP/1 loop's on top.
	r1 := bufio.NewReader(rd)
	if s, ok := ref.span(0, drop); ok {
		limit = s.head
	}
	if _, err := r1.Peek(1); err == nil && h2 {
		if p, err := r1.Peek(len(http2.ClientPreface)); err == nil && string(p) == http2.ClientPreface {
			return // goproxy's HTTP/2 server reads the rest
		}
	}
	// goproxy's readBufferedConn: a reader of r1 that is no *bufio.Reader,
	// which bufio.NewReader would return as it is.
	r2 := bufio.NewReader(readFunc(r1.Read))
	// at is where net/http stands in the input: what the reads took from
	// it, but for what its readers hold.
	at := func() int { return pos - r1.Buffered() - r2.Buffered() }
	buffered := func() int { return r1.Buffered() + r2.Buffered() }
	for i := 0; ; i++ {
		span, ok := ref.span(i, drop)
		limit = -1
		if ok && !diverged {
			limit = span.head
		}
		if _, err := r2.Peek(1); err != nil { // goproxy's IsEOF
			break
		}
		req, err := http.ReadRequest(r2)
		if err != nil {
			if ok {
				t.Fatalf("request %d: %v, read without the bounds", i, err)
			}
			break
		}
		if !ok || at() != span.head {
			t.Fatalf("request %d: its head ended at %d, without the bounds at %v", i, at(), ref.spans)
		}
		if c.h1 && !diverged && (h.state != boundLoose || !mayLoose) && (h.state != boundAwait || buffered() != 0) {
			t.Fatalf("request %d: net/http read its head, the bounds are in state %d with %d bytes past it buffered", i, h.state, buffered())
		}
		if c.h1 { // RoundTrip
			h.request(req)
		}
		chunked := len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked"
		if !chunked && (req.ContentLength < 0 || len(req.TransferEncoding) > 0) {
			mayLoose = true // a body of no length the bounds follow: "PRI * HTTP/2.0" has the rest
		}
		diverged = diverged || span.bareLF
		if limit = span.end; diverged {
			limit = -1
		}
		_, err = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
		if err != nil {
			if span.end >= 0 {
				t.Fatalf("request %d: its body: %v; without the bounds it ended at %d", i, err, span.end)
			}
			break // a body's fault ends the connection (bodyfault.go)
		}
		if span.end < 0 || at() != span.end {
			t.Fatalf("request %d: its body ended at %d, without the bounds at %d", i, at(), span.end)
		}
		if c.h1 && !diverged && (h.state == boundDone && buffered() != 0 || h.state != boundDone && h.state != boundLoose) {
			t.Fatalf("request %d: its body read, the bounds are in state %d with %d bytes past it buffered", i, h.state, buffered())
		}
		if c.h1 && !diverged && !mayLoose && h.state != boundDone {
			t.Fatalf("request %d: its body read whole, the boundaries were given up (state %d): %q", i, h.state, data)
		}
		if !c.h1 {
			continue
		}
		if skipAwait&(1<<(i%8)) == 0 { // the response body's close: nextHead
			dropFrom = -1
			if armed[i+1] = !diverged && h.state == boundDone; armed[i+1] {
				dropFrom = pos // where the bounds stand: at span.end, with nothing buffered
			}
			c.awaitHead()
			dropTake()
			checkH1State(t, h)
		} else {
			mayLoose = true
		}
	}
	if ended && pos != len(data) {
		t.Fatalf("the reads ended having handed out %d and dropped %d of %d bytes", len(out), dropped, len(data))
	}
}

// checkH1State fails t unless h's state is one h1bounds.go defines.
func checkH1State(t *testing.T, h *h1Bounds) {
	t.Helper()
	switch {
	case h.state > boundTrailer:
		t.Fatalf("state %d: none defined", h.state)
	case h.line > lineCR:
		t.Fatalf("line state %d: none defined", h.line)
	case h.state == boundChunkLine && h.sub > sizeRest, h.state == boundTrailer && h.sub > 4:
		t.Fatalf("state %d: sub-state %d, none defined", h.state, h.sub)
	case h.state != boundLoose && h.left < 0:
		t.Fatalf("state %d: %d body bytes left", h.state, h.left)
	}
}
