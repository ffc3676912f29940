package intercept

import (
	"net/http"
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
