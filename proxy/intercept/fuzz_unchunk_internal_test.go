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
// into writes is part of the input.
//
// (1) Any answer, written whole or cut where the fuzzer says, never
// panics, fails or not alike whatever the cut, and, when it does not fail,
// gives the client the same bytes whatever the cut, never more than it
// came with plus the one "Connection: close" the head gains.
// (2) A body chunked by net/http's own writer (any data, any write sizes,
// a trailer after it) reaches the client as exactly the data, after the
// rewritten head.
func FuzzUnchunk(f *testing.F) {
	const chunkedHead = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
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
		f.Add([]byte(s), []byte{0}, []byte("hello"))
		f.Add([]byte(s), []byte{2, 0, 7}, []byte(strings.Repeat("z", 26)))
	}
	req := &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 0}
	// feed writes in to a fresh client connection, in writes of the sizes
	// sizes gives in turn (each plus one), or whole when there are none.
	feed := func(t *testing.T, in, sizes []byte) (got string, failed bool) {
		wc := &writesConn{}
		c := &hijackedConn{Conn: wc}
		c.startUnchunk(req)
		for b, i := in, 0; len(b) > 0; i++ {
			k := len(b)
			if len(sizes) > 0 {
				k = min(k, int(sizes[i%len(sizes)])+1)
			}
			n, err := c.Write(b[:k])
			if err != nil {
				return wc.got.String(), true
			}
			if n != k {
				t.Fatalf("Write of %d bytes: %d, with no error", k, n)
			}
			b = b[k:]
		}
		return wc.got.String(), false
	}
	f.Fuzz(func(t *testing.T, answer, sizes, data []byte) {
		whole, wholeFailed := feed(t, answer, nil)
		cut, cutFailed := feed(t, answer, sizes)
		if wholeFailed != cutFailed {
			t.Fatalf("%q: written whole fails %v, cut %v fails %v", answer, wholeFailed, sizes, cutFailed)
		}
		if !wholeFailed && whole != cut {
			t.Fatalf("%q: written whole gives %q, cut %v gives %q", answer, whole, sizes, cut)
		}
		if len(whole) > len(answer)+len("Connection: close\r\n") {
			t.Fatalf("%q: the client got more (%q)", answer, whole)
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
		_, _ = io.WriteString(&enc, "X-Sum: abc\r\n\r\n")
		got, failed := feed(t, enc.Bytes(), sizes)
		if want := "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + string(data); failed || got != want {
			t.Fatalf("net/http's chunking of %q in writes of %v: got %q (failed %v), want %q", data, sizes, got, failed, want)
		}
	})
}
