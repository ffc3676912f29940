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
// before the CRLF CRLF its reader peeks for, gives the boundaries up at
// that line: net/http reads what follows as the next request, which the
// boundaries, reading on to the CRLF CRLF, would have taken for the
// trailer's, and awaitHead's drop of CR and LF bytes before a head would
// have cut that request's bytes (a body of CRLFs lost its bytes: review
// r3s29 F1). One ended at the CRLF CRLF is ended there, as net/http ends
// it, whatever bare LFs came before.
func TestTrailerBareLFLoose(t *testing.T) {
	const next = "POST /n HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\n"
	for _, tc := range []struct {
		trailer string
		loose   bool
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
		// trailer to: its CRLF CRLF (or a CRLF at its start).
		const head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
		body := "0\r\n" + tc.trailer + next
		span, ok := newH1Reference([]byte(head+body)).span(0, nil)
		if !ok || span.end < 0 {
			t.Fatalf("trailer %q: net/http read no body's end", tc.trailer)
		}
		crlf := 3 + strings.Index(body[3:], "\r\n\r\n") + 4
		if strings.HasPrefix(tc.trailer, "\r\n") {
			crlf = 5
		}
		if agree := span.end-len(head) == crlf; agree == tc.loose {
			t.Fatalf("trailer %q: net/http ends the body at %d, the CRLF CRLF at %d, the case says loose %v", tc.trailer, span.end-len(head), crlf, tc.loose)
		}
		h := chunkedBounds()
		got := h.chunks([]byte(body))
		switch {
		case tc.loose && (h.state != boundLoose || got != len(body)):
			t.Errorf("trailer %q: took %d of %d bytes, state %d; want all, loose (%d)", tc.trailer, got, len(body), h.state, boundLoose)
		case !tc.loose && (h.state != boundDone || got != crlf):
			t.Errorf("trailer %q: took %d of %d bytes, state %d; want %d, done (%d)", tc.trailer, got, len(body), h.state, crlf, boundDone)
		}
	}
}
