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
// the way, and returns where each request it read ended. Buffered readers
// make of a stream the same requests however it is cut into reads, so
// these are the ends the bounded loop must find too.
func h1Reference(data []byte) []h1Span {
	src := &countReader{r: bytes.NewReader(data)}
	r1 := bufio.NewReader(src)
	r2 := bufio.NewReader(readFunc(r1.Read))
	pos := func() int { return src.n - r1.Buffered() - r2.Buffered() }
	var spans []h1Span
	for {
		if _, err := r2.Peek(1); err != nil {
			return spans
		}
		req, err := http.ReadRequest(r2)
		if err != nil {
			return spans
		}
		s := h1Span{head: pos(), end: -1}
		_, err = io.Copy(io.Discard, req.Body)
		if err == nil {
			s.end = pos()
			chunked := len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked"
			if chunked && !bytes.HasSuffix(data[s.head:s.end], []byte("\r\n\r\n")) {
				s.bareLF = true
			}
		}
		spans = append(spans, s)
		if err != nil {
			return spans
		}
	}
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
//   - the bytes handed out, together, are the input's start, and all of
//     it once a read returns an error (nothing lost, reordered or
//     duplicated), and no read returns nothing while bytes are kept;
//   - net/http reads the same requests, ending at the same offsets, as it
//     does with no bounds in the way;
//   - while the boundaries are not given up (boundLoose), no byte past the
//     end of the head or body net/http is reading is handed out, and a
//     head net/http read whole is one the bounds saw end (boundAwait);
//   - the state, and a head's line state, are defined ones.
func FuzzH1Bounds(f *testing.F) {
	for i, s := range h1Seeds {
		next := h1Seeds[(i+1)%len(h1Seeds)]
		f.Add([]byte(s), []byte{}, false, false, uint8(0))
		f.Add([]byte(s+next), []byte{0, 3, 40, 255, 7, 1}, i%2 == 0, i%3 == 0, uint8(i))
	}
	for _, size := range hugeChunkSizes { // chunks_internal_test.go
		body := "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + size + "\r\nabcdefgh\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
		f.Add([]byte(body), []byte{60, 2, 2, 200}, false, false, uint8(0))
	}
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxGET"), []byte{0, 60}, true, false, uint8(0))
	f.Add([]byte("GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HT"), []byte{}, true, true, uint8(0))
	f.Add([]byte(http2.ClientPreface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00"), []byte{2, 5}, true, false, uint8(0))
	f.Fuzz(func(t *testing.T, data, sizes []byte, h2, eofWithLast bool, skipAwait uint8) {
		fuzzH1Bounds(t, data, sizes, h2, eofWithLast, skipAwait)
	})
}

func fuzzH1Bounds(t *testing.T, data, sizes []byte, h2, eofWithLast bool, skipAwait uint8) {
	conn := &fuzzConn{data: data, sizes: sizes, eofWithLast: eofWithLast}
	c := &hijackedConn{Conn: conn, h1: !h2}
	h := &c.bounds
	spans := h1Reference(data)
	var out []byte    // what the reads handed out
	limit := -1       // where net/http ends the head or body it is reading; -1: not known
	ended := false    // a read returned an error
	diverged := false // past a trailer the boundaries read otherwise, by design
	// A read may go past a request, giving the boundaries up: goproxy's
	// peek for the preface, after a head shorter than it; a response
	// with no awaitHead; a body of no known length. Else they follow
	// every request net/http reads.
	mayLoose := h2
	rd := readFunc(func(b []byte) (int, error) {
		kept := len(h.pending)
		n, err := c.readConn(b)
		if at := len(out); at+n > len(data) || !bytes.Equal(b[:n], data[at:at+n]) {
			t.Fatalf("after %d bytes, handed out %q; the input goes on %q", at, b[:n], data[at:min(at+n, len(data))])
		}
		out = append(out, b[:n]...)
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
		if c.h1 && h.state != boundLoose && limit >= 0 && len(out) > limit {
			t.Fatalf("state %d: handed out %d bytes, past the end of the part net/http reads, at %d (input %q)", h.state, len(out), limit, data)
		}
		return n, err
	})
	// goproxy's readers: its peek for TLS, and for an h2 connection its
	// peek for the preface, on the first; its HTTP/1 loop's on top.
	r1 := bufio.NewReader(rd)
	if len(spans) > 0 {
		limit = spans[0].head
	}
	if _, err := r1.Peek(1); err == nil && h2 {
		if p, err := r1.Peek(len(http2.ClientPreface)); err == nil && string(p) == http2.ClientPreface {
			return // goproxy's HTTP/2 server reads the rest
		}
	}
	// goproxy's readBufferedConn: a reader of r1 that is no *bufio.Reader,
	// which bufio.NewReader would return as it is.
	r2 := bufio.NewReader(readFunc(r1.Read))
	buffered := func() int { return r1.Buffered() + r2.Buffered() }
	for i := 0; ; i++ {
		limit = -1
		if i < len(spans) && !diverged {
			limit = spans[i].head
		}
		if _, err := r2.Peek(1); err != nil { // goproxy's IsEOF
			break
		}
		req, err := http.ReadRequest(r2)
		if err != nil {
			if i < len(spans) {
				t.Fatalf("request %d: %v, read without the bounds", i, err)
			}
			break
		}
		if i >= len(spans) || len(out)-buffered() != spans[i].head {
			t.Fatalf("request %d: its head ended at %d, without the bounds at %v", i, len(out)-buffered(), spans)
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
		diverged = diverged || spans[i].bareLF
		if limit = spans[i].end; diverged {
			limit = -1
		}
		_, err = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
		if err != nil {
			break // a body's fault ends the connection (bodyfault.go)
		}
		if spans[i].end >= 0 && len(out)-buffered() != spans[i].end {
			t.Fatalf("request %d: its body ended at %d, without the bounds at %d", i, len(out)-buffered(), spans[i].end)
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
			c.awaitHead()
			checkH1State(t, h)
		} else {
			mayLoose = true
		}
	}
	if ended && len(out) != len(data) {
		t.Fatalf("the reads ended having handed out %d of %d bytes", len(out), len(data))
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
