package sniff

import (
	"errors"
	"strings"
	"testing"
)

// Python's http.server splits a request line on any whitespace (str.split
// over the line decoded as Latin-1) and drops it before the method, and
// Tomcat takes a tab for a space: "GET\t/x HTTP/1.1" is an ordinary GET to
// them. Such a line is malformed HTTP, as two spaces are, never opaque
// bytes that pass the rules about names.
func TestSniffWhitespaceAroundMethod(t *testing.T) {
	const head = "\r\nHost: denied.example\r\n\r\n"
	var malformed []string
	for _, ws := range []string{"\t", "\v", "\f", "\r", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0"} {
		malformed = append(malformed,
			"GET"+ws+"/x HTTP/1.1"+head,       // after the method
			"POST"+ws+"/x"+ws+"HTTP/1.0"+head, // everywhere
			" "+ws+" CONNECT a.example:443 HTTP/1.1"+head,
		)
		if ws != "\r" { // CR alone before the method is a blank line, skipped
			malformed = append(malformed, ws+"GET /x HTTP/1.1"+head)
		}
	}
	malformed = append(malformed,
		"\r\n GET /x HTTP/1.1"+head,          // a blank line, then a space
		" \r\nGET /x HTTP/1.1"+head,          // a line of a space, then the request
		"\tPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", // the h2c preface after a tab
	)
	for _, in := range malformed {
		res, _ := sniffBytes(t, []byte(in), BufferSize)
		if res.Kind != KindHTTP || !errors.Is(res.Err, ErrMalformedHTTP) || res.HTTP.Method == "" {
			t.Errorf("%q: %+v; want malformed HTTP with its method", in, res)
		}
		if req, err := ParseHTTPRequest([]byte(strings.TrimLeft(in, "\r\n"))); !errors.Is(err, ErrMalformedHTTP) || req.Method == "" {
			t.Errorf("%q: ParseHTTPRequest %+v, %v", in, req, err)
		}
	}

	// Lines that name no HTTP, or no known method, stay other TCP.
	for _, in := range []string{
		"GET\tkey\r\n",             // a Redis inline command, tab-separated
		" GET key\r\n",             // and after a space
		"\tFOO / HTTP/1.1" + head,  // no method this parser knows
		"\tget / HTTP/1.1" + head,  // nor in lower case
		"GET\r\n",                  // HTTP/0.9-like, no version
		" \x00\x01binary",          // a space, then binary
		"\xa0\x01\x02\x03binary..", // neither SSLv2 nor whitespace before a method
	} {
		if res, _ := sniffBytes(t, []byte(in), BufferSize); res.Kind != KindOther || res.Err != nil {
			t.Errorf("%q: %+v; want other", in, res)
		}
	}

	// A client that stops mid-line after a known method and a tab is HTTP
	// cut short, as one after "GET  /" is; one that stops after
	// whitespace alone is other, as one after blank lines is.
	if res, _ := sniffBytes(t, []byte("GET\t/x"), BufferSize); res.Kind != KindHTTP || res.HTTP.Method != "GET" || res.Err == nil {
		t.Errorf("GET, a tab, then EOF: %+v", res)
	}
	if res, _ := sniffBytes(t, []byte(" \t "), BufferSize); res.Kind != KindOther {
		t.Errorf("whitespace, then EOF: %+v", res)
	}
	// A buffer full of whitespace may still end in a request a server
	// takes: unreadable HTTP, as a buffer full of blank lines is.
	res, _ := sniffBytes(t, []byte(strings.Repeat(" \t", 200)+"GET /x HTTP/1.1"+head), 256)
	if res.Kind != KindHTTP || !errors.Is(res.Err, ErrMalformedHTTP) {
		t.Errorf("a buffer full of whitespace: %+v", res)
	}
	// An SSLv2-format hello whose first byte is 0x85 is still one.
	v2 := "\x85\x1c\x01\x03\x03\x00\x03\x00\x00\x00\x10\x00\x00\x2f" + strings.Repeat("\xaa", 16)
	if res, _ := sniffBytes(t, []byte(v2), BufferSize); res.Kind != KindTLS || !errors.Is(res.Err, ErrSSLv2Hello) {
		t.Errorf("SSLv2-format hello from 0x85: %+v", res)
	}
	// One space after a known method, and none before it, is still read.
	if res, _ := sniffBytes(t, []byte("GET /x HTTP/1.1"+head), BufferSize); res.Kind != KindHTTP || res.Err != nil || res.HTTP.Host != "denied.example" {
		t.Errorf("a valid request: %+v", res)
	}
}
