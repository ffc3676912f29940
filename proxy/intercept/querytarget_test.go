package intercept_test

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2cRawGet sends, over c, a cleartext HTTP/2 GET for www.example.test
// whose :path is path, written by hand (Go's client would not send every
// path), and returns the response's status ("" for none).
func h2cRawGet(t *testing.T, c io.ReadWriter, path string) string {
	t.Helper()
	out := h2cStart()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: "www.example.test"},
	} {
		enc.WriteField(f)
	}
	http2.NewFramer(out, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
	if _, err := c.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(io.Discard, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	status := ""
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the response to %q: %v", path, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				status = f.PseudoValue("status")
				if f.StreamEnded() {
					return status
				}
			}
		case *http2.DataFrame:
			if f.StreamID == 1 && f.StreamEnded() {
				return status
			}
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return status
		}
	}
}

// TestQueryReachesOriginEscaped: a query byte RFC 3986 does not allow
// raw reaches an HTTP/1 origin percent-encoded. An HTTP/2 client's :path
// may hold a space, which went into the request line as it came: "/a?x
// HTTP/1.0 X" became "GET /a?x HTTP/1.0 X HTTP/1.1", a line an origin
// that splits on spaces reads with another target and version.
func TestQueryReachesOriginEscaped(t *testing.T) {
	for _, tc := range []struct {
		name, path, want string
		h1               bool
	}{
		{"h2c, space", "/a?x HTTP/1.0 X", "GET /a?x%20HTTP/1.0%20X HTTP/1.1", false},
		{"h2c, high bytes and delimiters", "/a?q=\xff{|}\"<>#", "GET /a?q=%FF%7B%7C%7D%22%3C%3E%23 HTTP/1.1", false},
		{"h2c, allowed bytes untouched", "/a?q=%20x&y=1:2@3/?(')*+,;=!$~", "GET /a?q=%20x&y=1:2@3/?(')*+,;=!$~ HTTP/1.1", false},
		{"HTTP/1, raw UTF-8", "/a?q=caf\xc3\xa9|x", "GET /a?q=caf%C3%A9%7Cx HTTP/1.1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &laxOrigin{t: t}
			c, _ := r.connectTCP(o.conn(), httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			if tc.h1 {
				resp, _ := newHTTPClient(t, c).do("GET " + tc.path + " HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
				if resp.StatusCode != 200 {
					t.Errorf("status %d, want 200", resp.StatusCode)
				}
			} else if status := h2cRawGet(t, c, tc.path); status != "200" {
				t.Errorf("status %q, want 200", status)
			}
			c.Close()
			raw, _ := o.snapshot()
			if len(raw) == 0 {
				t.Fatal("nothing reached the origin")
			}
			if line, _, _ := strings.Cut(raw[0], "\r\n"); line != tc.want {
				t.Errorf("the origin's request line is %q, want %q", line, tc.want)
			}
		})
	}
}
