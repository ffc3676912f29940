package intercept

import (
	"net/http"
	"strings"
	"testing"
)

// hugeChunkSizes are size lines of 16 hex digits, which net/http takes
// (parseHexUint reads up to 16) but which do not fit, with the CRLF after
// their data, in the int64 the boundaries count a chunk in.
var hugeChunkSizes = []string{"8000000000000000", "FFFFFFFFFFFFFFFF", "7FFFFFFFFFFFFFFF"}

// A chunk size past what an int64 can count gives the boundaries up at its
// size line (maxChunkPrefix), before any of its data: counted, such a size
// overflows, and a negative count stepped chunks() back before the start
// of its bytes, an index out of range that took the process down (one
// client's request). Holds the prefix check (mutant C06: removed).
func TestChunkSizePastInt64Loose(t *testing.T) {
	for _, size := range hugeChunkSizes {
		h := chunkedBounds()
		line := []byte(size + "\r\n")
		if got := h.chunks(line); got != len(line) || h.state != boundLoose {
			t.Errorf("size line %q: took %d of %d bytes, state %d; want all, loose (%d)", size, got, len(line), h.state, boundLoose)
		}
	}
}

// Should a chunk's count be negative however it came to be (an overflow
// past a regressed prefix check), chunks() gives the boundaries up rather
// than step back in its bytes: the size line and data in one call hand out
// every byte, loose, and nothing indexes out of range. Holds the negative
// count check in chunks(): with it and the prefix check both removed, the
// data after "8000000000000000" panics (index out of range).
func TestChunkNegativeCountLoose(t *testing.T) {
	for _, size := range hugeChunkSizes {
		h := chunkedBounds()
		p := []byte(size + "\r\nabcdefgh\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
		if got := h.chunks(p); got != len(p) || h.state != boundLoose {
			t.Errorf("size %q and data in one read: took %d of %d bytes, state %d; want all, loose (%d)", size, got, len(p), h.state, boundLoose)
		}
	}
	h := chunkedBounds()
	h.state, h.left = boundChunkData, -5
	if got := h.chunks([]byte("abc")); got != 3 || h.state != boundLoose {
		t.Errorf("a negative chunk count: took %d of 3 bytes, state %d; want all, loose (%d)", got, h.state, boundLoose)
	}
}

// chunkedBounds returns the boundaries at the start of a chunked body.
func chunkedBounds() *h1Bounds {
	var h h1Bounds
	h.take([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"))
	h.request(&http.Request{ContentLength: -1, TransferEncoding: []string{"chunked"}})
	return &h
}

// A trailer whose fields net/http ends at an empty line a bare LF ended,
// before the CRLF CRLF its reader peeks for, is read to that CRLF CRLF, as
// net/http's peek reads it, and its end marked lost: what follows it there
// may be the next request's body, net/http having read that request's head
// from the bytes the bounds took for the trailer, so awaitHead drops none
// of its CR or LF bytes. It dropped them as empty lines before a head: a
// body of CRLFs lost its bytes, and what followed was read as its body
// (review r3s29 F1). After a trailer ended at its CRLF CRLF, as net/http
// ends it whatever bare LFs came before, CR or LF bytes are dropped.
func TestTrailerBareLFNoDrop(t *testing.T) {
	const next = "POST /n HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\n"
	for _, tc := range []struct {
		trailer string
		lost    bool
	}{
		{"\r\n", false},
		{"X: 1\r\n\r\n", false},
		{"X: 1\nY: 2\r\n\r\n", false},
		{"X: 1\r\n \r\n\r\n", false}, // a continuation line of white space
		{"X: 1\n \n\r\n\r\n", true},
		{"\n", true},
		{"X: 1\n\n", true},
		{"X: 1\r\n\n", true},
		{"X: 1\n\r\n", true},
	} {
		// Where net/http ends the body, and where the boundaries read the
		// trailer to: its CRLF CRLF (or a CRLF at its start). A CRLF
		// follows it, and a request whose body is CRLFs.
		const head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
		body := "0\r\n" + tc.trailer + "\r\n" + next
		span, ok := newH1Reference([]byte(head+body)).span(0, nil)
		if !ok || span.end < 0 {
			t.Fatalf("trailer %q: net/http read no body's end", tc.trailer)
		}
		crlf := 3 + strings.Index(body[3:], "\r\n\r\n") + 4
		if strings.HasPrefix(tc.trailer, "\r\n") {
			crlf = 5
		}
		if agree := span.end-len(head) == crlf; agree == tc.lost {
			t.Fatalf("trailer %q: net/http ends the body at %d, the CRLF CRLF at %d, the case says lost %v", tc.trailer, span.end-len(head), crlf, tc.lost)
		}
		c := &hijackedConn{Conn: &fuzzConn{}, h1: true}
		c.bounds = *chunkedBounds()
		h := &c.bounds
		if got := h.chunks([]byte(body)); got != crlf || h.state != boundDone || h.lost != tc.lost {
			t.Errorf("trailer %q: took %d of %d bytes, state %d, lost %v; want %d, done (%d), lost %v", tc.trailer, got, len(body), h.state, h.lost, crlf, boundDone, tc.lost)
			continue
		}
		h.pending = []byte(body[crlf:]) // as bound keeps them
		c.awaitHead()
		want := body[crlf:]
		if !tc.lost {
			want = strings.TrimLeft(want, "\r\n")
		}
		if string(h.pending) != want {
			t.Errorf("trailer %q: kept %q after the response, want %q", tc.trailer, h.pending, want)
		}
	}
}
