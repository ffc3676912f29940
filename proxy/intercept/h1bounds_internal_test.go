package intercept

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
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
