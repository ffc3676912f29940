package intercept

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
)

// FuzzUnchunk fuzzes the unchunking of answers to HTTP/1.0 requests
// (http10.go): a hand-written byte parser on every such answer's path,
// whose state carries across goproxy's writes, so the cut of an answer
// into writes is part of the input, and so is the request's method (GET,
// or HEAD, whose answer is a head alone).
//
// (1) Any answer, written whole or cut where the fuzzer says, never
// panics, fails or not alike whatever the cut, and, when it does not fail,
// gives the client the same bytes whatever the cut, never more than it
// came with plus the one "Connection: close" the head gains, and leaves
// the same verdict on the connection's end (cut: a RST, or a close).
// (2) A body chunked by net/http's own writer (any data, any write sizes,
// a trailer after it) reaches the client as exactly the data, after the
// rewritten head; after each write the answer is cut (the close would make
// it look whole) exactly while the head is out and the last chunk's line
// is not: fed up to the byte before that line's end it is, with the line
// whole it is not. A HEAD's answer is its head without Transfer-Encoding
// and Trailer, never cut.
func FuzzUnchunk(f *testing.F) {
	const chunkedHead = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
	const trailer = "X-Sum: abc\r\n\r\n"
	// Seeds: the answers of the http10 internal tests (TestUnchunkSplits,
	// TestUnchunkPassesOthers, TestUnchunkBadFraming).
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-A: b\r\n\r\n" +
			"5;ext=\"a\"\r\nhello\r\n1A\r\n" + strings.Repeat("z", 26) + "\r\n0\r\nX-Sum: abc\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		chunkedHead + "zz\r\n",
		chunkedHead + ";x\r\n",
		chunkedHead + "\r\n",
		chunkedHead + "5\r\nhelloXY",
		chunkedHead + "fffffffffffffffff\r\n",
		chunkedHead + "0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
	} {
		for _, head := range []bool{false, true} {
			f.Add([]byte(s), []byte{0}, []byte("hello"), head)
			f.Add([]byte(s), []byte{2, 0, 7}, []byte(strings.Repeat("z", 26)), head)
		}
	}
	get := &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 0}
	headReq := &http.Request{Method: http.MethodHead, ProtoMajor: 1, ProtoMinor: 0}
	// feed writes in to a fresh client connection, the answer to req, in
	// writes of the sizes sizes gives in turn (each plus one), or whole
	// when there are none; after each write, check (if set) is given how
	// many bytes were written and the connection.
	feed := func(t *testing.T, req *http.Request, in, sizes []byte, check func(fed int, c *hijackedConn)) (got string, failed bool, cut bool) {
		wc := &writesConn{}
		c := &hijackedConn{Conn: wc}
		c.startUnchunk(req)
		fed := 0
		for b, i := in, 0; len(b) > 0; i++ {
			k := len(b)
			if len(sizes) > 0 {
				k = min(k, int(sizes[i%len(sizes)])+1)
			}
			n, err := c.Write(b[:k])
			if err != nil {
				return wc.got.String(), true, c.unchunk.cut()
			}
			if n != k {
				t.Fatalf("Write of %d bytes: %d, with no error", k, n)
			}
			b, fed = b[k:], fed+k
			if check != nil {
				check(fed, c)
			}
		}
		return wc.got.String(), false, c.unchunk.cut()
	}
	f.Fuzz(func(t *testing.T, answer, sizes, data []byte, head bool) {
		req := get
		if head {
			req = headReq
		}
		whole, wholeFailed, wholeCut := feed(t, req, answer, nil, nil)
		cut, cutFailed, cutCut := feed(t, req, answer, sizes, nil)
		if wholeFailed != cutFailed {
			t.Fatalf("%s %q: written whole fails %v, cut %v fails %v", req.Method, answer, wholeFailed, sizes, cutFailed)
		}
		if !wholeFailed && whole != cut {
			t.Fatalf("%s %q: written whole gives %q, cut %v gives %q", req.Method, answer, whole, sizes, cut)
		}
		if !wholeFailed && wholeCut != cutCut {
			t.Fatalf("%s %q: written whole leaves cut() %v, cut %v leaves %v", req.Method, answer, wholeCut, sizes, cutCut)
		}
		if len(whole) > len(answer)+len("Connection: close\r\n") {
			t.Fatalf("%s %q: the client got more (%q)", req.Method, answer, whole)
		}

		if head {
			got, failed, isCut := feed(t, req, []byte(chunkedHead), sizes, nil)
			if want := "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"; failed || isCut || got != want {
				t.Fatalf("a HEAD's chunked head in writes of %v: got %q (failed %v, cut %v), want %q", sizes, got, failed, isCut, want)
			}
			return
		}
		var enc bytes.Buffer
		enc.WriteString(chunkedHead)
		cw := httputil.NewChunkedWriter(&enc)
		for d, i := data, 0; len(d) > 0; i++ {
			k := len(d)
			if len(sizes) > 0 {
				k = min(k, int(sizes[i%len(sizes)])+1)
			}
			_, _ = cw.Write(d[:k]) // a bytes.Buffer's writes do not fail
			d = d[k:]
		}
		_ = cw.Close()
		lastEnd := enc.Len() // the last chunk's line, "0\r\n", ends here
		_, _ = io.WriteString(&enc, trailer)
		got, failed, _ := feed(t, req, enc.Bytes(), sizes, func(fed int, c *hijackedConn) {
			if want := fed >= len(chunkedHead) && fed < lastEnd; c.unchunk.cut() != want {
				t.Fatalf("net/http's chunking of %q in writes of %v: cut() %v after %d of %d bytes (head %d, last chunk's line ends at %d)",
					data, sizes, !want, fed, enc.Len(), len(chunkedHead), lastEnd)
			}
		})
		if want := "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + string(data); failed || got != want {
			t.Fatalf("net/http's chunking of %q in writes of %v: got %q (failed %v), want %q", data, sizes, got, failed, want)
		}
		for _, tc := range []struct {
			fed  int
			want bool
		}{{lastEnd - 1, true}, {lastEnd, false}} {
			if _, failed, isCut := feed(t, req, enc.Bytes()[:tc.fed], sizes, nil); failed || isCut != tc.want {
				t.Fatalf("net/http's chunking of %q fed up to %d (its last chunk's line ends at %d): cut() %v (failed %v), want %v",
					data, tc.fed, lastEnd, isCut, failed, tc.want)
			}
		}
	})
}
