package intercept

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// A head's end is found where net/http's reader stops, however the head
// is split between reads: net/http leaves exactly the bytes after it
// buffered, and the bounds hand out exactly the head, in one read or two.
func TestH1BoundsHeadEnd(t *testing.T) {
	const after = "GET /next HTTP/1.1\r\n"
	for _, head := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.1\r\nHost: a\n\r\n",
		"GET / HTTP/1.1\nHost: a\r\n\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: b\r\n c\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
	} {
		br := bufio.NewReader(bytes.NewReader([]byte(head + after)))
		if _, err := http.ReadRequest(br); err != nil || br.Buffered() != len(after) {
			t.Fatalf("net/http read %q leaving %d bytes (%v); want %d", head, br.Buffered(), err, len(after))
		}
		p := []byte(head + after)
		for i := 0; i <= len(p); i++ {
			var h h1Bounds
			got := h.take(p[:i])
			if got == i && h.state == boundHead {
				got += h.take(p[i:])
			}
			if got != len(head) || h.state != boundAwait {
				t.Errorf("%q split at %d: handed out %d bytes (state %d), want the head's %d", head, i, got, h.state, len(head))
			}
		}
	}
}

// An h2 connection whose bytes turn out not to be the preface is bounded
// from the read that shows it, whether that read is its first or the
// preface's start came before: the head is handed out up to its end and
// the rest kept. A preface's start that holds a head's end already gives
// the boundaries up.
func TestH1BoundsFromH2(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string // each read in one read
		want   []string // what the reads hand out
		state  uint8
	}{
		{"first read", []string{"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HT"},
			[]string{"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"}, boundAwait},
		{"after the preface's start", []string{"P", "OST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxGET"},
			[]string{"P", "OST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n"}, boundAwait},
		{"a head's end in the preface's start", []string{"PRI * HTTP/2.0\r\n\r\n", "XGET / HTTP/1.1\r\n\r\n"},
			[]string{"PRI * HTTP/2.0\r\n\r\n", "XGET / HTTP/1.1\r\n\r\n"}, boundLoose},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := testnet.TCPPair(t)
			c := &hijackedConn{Conn: server} // h1 false: an h2 connection
			b := make([]byte, 4096)
			for i, w := range tc.writes {
				if _, err := io.WriteString(client, w); err != nil {
					t.Fatal(err)
				}
				var got []byte
				for len(got) < len(tc.want[i]) {
					n, err := c.readConn(b)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, b[:n]...)
				}
				if string(got) != tc.want[i] {
					t.Fatalf("read %d handed out %q, want %q", i, got, tc.want[i])
				}
			}
			if !c.h1 || c.bounds.state != tc.state {
				t.Fatalf("h1 %v, state %d; want h1, state %d", c.h1, c.bounds.state, tc.state)
			}
			if tc.state == boundAwait {
				rest := tc.writes[len(tc.writes)-1][len(tc.want[len(tc.want)-1]):]
				if string(c.bounds.pending) != rest {
					t.Fatalf("kept %q, want %q", c.bounds.pending, rest)
				}
			}
		})
	}
}

// byteSource hands out its data in reads of the given sizes, in turn.
type byteSource struct {
	data  []byte
	sizes []int
}

func (s *byteSource) Read(b []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := len(s.data)
	if len(s.sizes) > 0 {
		n = min(n, s.sizes[0])
		s.sizes = s.sizes[1:]
	}
	n = copy(b, s.data[:n])
	s.data = s.data[n:]
	return n, nil
}

// boundedReader reads src through the bounds, as hijackedConn does.
type boundedReader struct {
	h   *h1Bounds
	src *byteSource
}

func (r boundedReader) Read(b []byte) (int, error) {
	if len(r.h.pending) > 0 {
		n := copy(b, r.h.pending)
		k := r.h.take(b[:n])
		r.h.pending = r.h.pending[k:]
		return k, nil
	}
	n, err := r.src.Read(b)
	return r.h.bound(b, n, err)
}

// serveStream reads data, cut into reads of random sizes, through the
// bounds and goproxy's two buffered readers, as goproxy's HTTP/1 loop
// does: a request, its body (drained), the next. It returns the paths
// read, and calls each with the state the request left.
func serveStream(t *testing.T, rng *rand.Rand, data []byte, each func(path string, h *h1Bounds, buffered int)) []string {
	var sizes []int
	for s := 0; s < len(data); {
		n := 1 + rng.Intn(40)
		sizes = append(sizes, n)
		s += n
	}
	h := &h1Bounds{}
	r1 := bufio.NewReader(boundedReader{h, &byteSource{data: data, sizes: sizes}})
	r2 := bufio.NewReader(r1)
	var paths []string
	for {
		if _, err := r2.Peek(1); err != nil { // goproxy's IsEOF
			return paths
		}
		req, err := http.ReadRequest(r2)
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		h.request(req)
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			t.Fatalf("%q: %s's body: %v", data, req.URL.Path, err)
		}
		req.Body.Close()
		paths = append(paths, req.URL.Path)
		each(req.URL.Path, h, r1.Buffered()+r2.Buffered())
		if h.state == boundDone { // awaitHead
			h.state, h.line = boundHead, lineMid
		}
	}
}

// Pipelined requests, with bodies of known length and chunked ones,
// whatever the reads that bring them: each is handed out up to its body's
// end, where net/http stops, and no further, so goproxy's buffers hold
// nothing once it is read.
func TestH1BoundsPipelinedStream(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	reqs := []string{
		"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nworld",
		"POST /d HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nxy",
		"GET /e HTTP/1.1\nHost: a\nX: b\n c\n\n",
		"POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /g HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"1;ext=\"a\\\"b\"\r\nx\r\n00000000000000a \t\r\n0123456789\r\nA;\r\n" + strings.Repeat("y", 10) + "\r\n0\r\n\r\n",
		"POST /i HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\r\n\r\r\n0\r\nX-T: 1\r\nX-U: \r\n 2\r\n\r\n",
		"PUT /j HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n4\r\n\r\n\r\n\r\n0;last\r\nX: \r\n\r\n",
	}
	for iter := range 20000 {
		var data []byte
		var order []string
		for range 6 {
			r := reqs[rng.Intn(len(reqs))]
			data = append(data, r...)
			order = append(order, r[strings.IndexByte(r, ' ')+1:][:2])
		}
		paths := serveStream(t, rng, data, func(path string, h *h1Bounds, buffered int) {
			if h.state != boundDone || buffered != 0 {
				t.Fatalf("iter %d, %q: after %s, state %d and %d bytes buffered; want %d, none", iter, data, path, h.state, buffered, boundDone)
			}
		})
		if len(paths) != len(order) {
			t.Fatalf("%q: read %q", data, paths)
		}
	}
}

// A chunked body the boundaries do not read as net/http does (a trailer
// whose fields end at a bare line feed, before the CRLF CRLF net/http
// peeked for) or that net/http refuses only loses the boundaries: every
// request net/http reads from the bytes is read, and no read waits for
// bytes the bounds kept.
func TestH1BoundsChunkedDiverging(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	const next = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, tc := range []struct {
		body  string
		paths int // the requests net/http reads: the second is the next one
	}{
		{"0\r\nX: 1\n\nGET /in-trailer HTTP/1.1\r\nHost: a\r\n\r\n", 3},
		{"0\r\nX: 1\n\r\n", 2},
		{" 5\r\nhello\r\n0\r\n\r\n", 1},                          // refused: a space before the size
		{"5\nhello\r\n0\r\n\r\n", 1},                             // refused: a bare LF
		{"10000000000000000\r\nx\r\n0\r\n\r\n", 1},               // refused: past 16 digits
		{strings.Repeat("0", 4100) + "\r\n\r\n", 1},              // refused: a size line past 4 KiB
		{"0\r\nX: " + strings.Repeat("t", 4100) + "\r\n\r\n", 1}, // refused: a trailer past 4 KiB
	} {
		data := []byte("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + tc.body + next)
		for range 200 {
			var paths []string
			h := &h1Bounds{}
			var sizes []int
			for s := 0; s < len(data); {
				n := 1 + rng.Intn(40)
				sizes = append(sizes, n)
				s += n
			}
			r2 := bufio.NewReader(bufio.NewReader(boundedReader{h, &byteSource{data: data, sizes: sizes}}))
			for {
				req, err := http.ReadRequest(r2)
				if err != nil {
					break
				}
				h.request(req)
				_, err = io.Copy(io.Discard, req.Body)
				paths = append(paths, req.URL.Path)
				if err != nil {
					break
				}
				if h.state == boundDone {
					h.state, h.line = boundHead, lineMid
				} else {
					h.state = boundLoose // awaitHead
				}
			}
			if len(paths) != tc.paths {
				t.Fatalf("%q: read %q, want %d requests", tc.body, paths, tc.paths)
			}
		}
	}
}

// Once the boundaries are given up (boundLoose) they stay given up for the
// connection, whatever request goproxy parses next: after a divergence
// the bounds no longer know where that request's head began, so taking
// its body's length up again would hand goproxy a boundary in the wrong
// place and keep a request's bytes from it. A divergence only ever loses
// the boundaries: every byte is handed out as it comes.
func TestH1BoundsLooseStaysLoose(t *testing.T) {
	const head = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
	const next = "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n"
	for _, req := range []*http.Request{
		{ContentLength: 0},
		{ContentLength: 3},
		{ContentLength: -1},
		{ContentLength: -1, TransferEncoding: []string{"chunked"}},
	} {
		var h h1Bounds
		if got := h.take([]byte(head)); got != len(head) || h.state != boundAwait {
			t.Fatalf("head: handed out %d bytes (state %d), want %d (state %d)", got, h.state, len(head), boundAwait)
		}
		// A read past the request: the bytes of a WebSocket tunnel, say.
		if got := h.take([]byte("tunnel")); got != len("tunnel") || h.state != boundLoose {
			t.Fatalf("read past the request: handed out %d bytes (state %d), want all (state %d)", got, h.state, boundLoose)
		}
		h.request(req)
		if h.state != boundLoose {
			t.Errorf("request of length %d, TE %q, after the boundaries were given up: state %d, want %d (loose)", req.ContentLength, req.TransferEncoding, h.state, boundLoose)
		}
		if got := h.take([]byte(next)); got != len(next) {
			t.Errorf("request of length %d, TE %q, after the boundaries were given up: handed out %d of %d bytes, want all", req.ContentLength, req.TransferEncoding, got, len(next))
		}
	}
}

// A request whose body has no length the bounds can follow (a
// Content-Length of -1 without chunked, a Transfer-Encoding other than
// chunked alone) has the boundaries given up: the bytes read after its
// head are handed out whole, never a negative count (which bound() would
// take as a slice index and panic on). net/http's ReadRequest refuses such
// heads today; this holds the bounds safe should one come through.
func TestH1BoundsUnknownBodyLengthLoose(t *testing.T) {
	const head = "POST /a HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, req := range []*http.Request{
		{ContentLength: -1},
		{ContentLength: -1, TransferEncoding: []string{"gzip", "chunked"}},
		{ContentLength: 5, TransferEncoding: []string{"identity"}},
	} {
		var h h1Bounds
		h.take([]byte(head))
		h.request(req)
		b := []byte("some body bytes")
		n, err := h.bound(b, len(b), io.EOF)
		if n != len(b) || err != nil || h.err != io.EOF || h.state != boundLoose || len(h.pending) != 0 {
			t.Errorf("length %d, TE %q: handed out %d of %d bytes (%v, %v kept), state %d, %d kept; want all, no error, EOF kept, loose, none kept",
				req.ContentLength, req.TransferEncoding, n, len(b), err, h.err, h.state, len(h.pending))
		}
	}
}

// readResult is one read of a scriptedConn.
type readResult struct {
	data string
	err  error
}

// scriptedConn returns its reads in turn, then errPastScript.
type scriptedConn struct {
	net.Conn
	reads []readResult
	calls int
}

var errPastScript = errors.New("read past the script")

func (c *scriptedConn) Read(b []byte) (int, error) {
	c.calls++
	if len(c.reads) == 0 {
		return 0, errPastScript
	}
	r := c.reads[0]
	c.reads = c.reads[1:]
	return copy(b, r.data), r.err
}

// timeoutErr is a deadline's error.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// A read that brings bytes and an error together (crypto/tls returns a
// TLS 1.2 close_notify's io.EOF with the data before it) hands out the
// bytes alone, and the error with the next read, which reads no more of
// the connection: a read that brought a head is not the client's clean
// end (unreadhead.go's readFailed), and one whose bytes the bounds kept
// in part hands those out first. A timeout is not kept: the next read
// has whatever deadline is set by then.
func TestH1BoundsErrorAfterBytes(t *testing.T) {
	const head = "GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n"
	type out struct {
		data string
		err  error
	}
	for _, tc := range []struct {
		name  string
		state uint8
		read  readResult
		want  []out
		calls int // of the connection, by the reads of want
	}{
		{"loose", boundLoose, readResult{head, io.EOF}, []out{{head, nil}, {"", io.EOF}}, 1},
		{"head and more", boundHead, readResult{head + "GET", io.EOF}, []out{{head, nil}, {"GET", nil}, {"", io.EOF}}, 1},
		{"timeout", boundLoose, readResult{head, timeoutErr{}}, []out{{head, nil}, {"", errPastScript}}, 2},
		{"no bytes", boundLoose, readResult{"", io.EOF}, []out{{"", io.EOF}, {"", errPastScript}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &scriptedConn{reads: []readResult{tc.read}}
			h := h1Bounds{state: tc.state}
			for i, w := range tc.want {
				b := make([]byte, 64)
				n, err := h.read(c, b)
				if string(b[:n]) != w.data || err != w.err {
					t.Errorf("read %d: %q, %v; want %q, %v", i+1, b[:n], err, w.data, w.err)
				}
			}
			if c.calls != tc.calls {
				t.Errorf("%d reads of the connection, want %d", c.calls, tc.calls)
			}
		})
	}
}
