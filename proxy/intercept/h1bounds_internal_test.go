package intercept

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
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
