package sniff

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Every recognised method is HTTP, the longest (PROPPATCH, 9 bytes, whose
// space sits at index 9) included, whole and cut right after the method
// and its space. A method the window misses is classified as other TCP and
// decided on addresses alone, past the rules on names.
func TestEveryMethodIsHTTP(t *testing.T) {
	for _, m := range methods {
		if m == "PRI" {
			continue // the HTTP/2 preface, tested in TestSniffH2C
		}
		in := m + " /x HTTP/1.1\r\nHost: denied.example\r\n\r\n"
		req, err := ParseHTTPRequest([]byte(in))
		if err != nil || req.Method != m || req.Host != "denied.example" {
			t.Errorf("%q: %+v, %v; want method %s, Host denied.example", in, req, err, m)
		}
		res, need := classify([]byte(in), nil)
		if need != 0 || res.Kind != KindHTTP || res.Err != nil {
			t.Errorf("%q: classified %v (err %v, need %d), want http", in, res.Kind, res.Err, need)
		}
		if res, _ = classify([]byte(m+" "), io.EOF); res.Kind != KindHTTP {
			t.Errorf("%q then EOF: %v, want http", m+" ", res.Kind)
		}
	}
}

// readByNetHTTP returns the Host net/http gives the request in (the name
// the proxy decides allowed requests on again), or its error.
func readByNetHTTP(in string) (string, error) {
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(in)))
	if err != nil {
		return "", err
	}
	return req.Host, nil
}

// Authority names the host net/http will use as Request.Host: a CONNECT's
// target whatever its Host header says, and an absolute-form target's
// authority with userinfo cut at the last '@'. Authority feeds the first
// request's early deny, so a name other than net/http's would deny or pass
// on a name the request does not go to.
func TestAuthorityMatchesNetHTTP(t *testing.T) {
	for in, want := range map[string]string{
		"CONNECT denied.example:443 HTTP/1.1\r\nHost: allowed.example:443\r\n\r\n": "denied.example:443",
		"CONNECT denied.example:443 HTTP/1.1\r\n\r\n":                              "denied.example:443",
		"GET http://u@v@host.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n":     "host.example",
		"GET http://host.example?@other.example HTTP/1.1\r\nHost: h\r\n\r\n":       "host.example",
		"GET http://[::1]:80/x HTTP/1.1\r\n\r\n":                                   "[::1]:80",
	} {
		req, err := ParseHTTPRequest([]byte(in))
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if a := req.Authority(); a != want {
			t.Errorf("%q: Authority %q, want %q", in, a, want)
		}
		if host, err := readByNetHTTP(in); err != nil || host != want {
			t.Errorf("%q: net/http reads Host %q (%v); the test expects %q", in, host, err, want)
		}
	}
}

// A '#' ends an absolute-form target's authority (RFC 3986 §3.2, and
// net/url.Parse): "http://host.example#@other.example" names host.example,
// not other.example after the '@'. net/http refuses this request line (it
// reads the target with url.ParseRequestURI, which takes no fragment), so
// it is never forwarded; the early deny must still not be asked about a
// name that is no authority of the target.
func TestAuthorityEndsAtFragment(t *testing.T) {
	in := "GET http://host.example#@other.example HTTP/1.1\r\nHost: h\r\n\r\n"
	req, err := ParseHTTPRequest([]byte(in))
	if err != nil {
		t.Fatalf("%q: %v", in, err)
	}
	if a := req.Authority(); a != "host.example" {
		t.Errorf("%q: Authority %q, want host.example", in, a)
	}
	if _, err := readByNetHTTP(in); err == nil {
		t.Errorf("%q: net/http reads it; the test expects it refused", in)
	}
}

// A request line whose target is empty (two spaces) or holds a DEL is not
// one net/http reads (url.ParseRequestURI refuses both): it is malformed
// HTTP, never a parsed request with a name to decide on.
func TestOddTargetsMalformed(t *testing.T) {
	for _, in := range []string{
		"GET  HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET http://h\x7f.example/ HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		if req, err := ParseHTTPRequest([]byte(in)); !errors.Is(err, ErrMalformedHTTP) {
			t.Errorf("%q: %+v, %v; want ErrMalformedHTTP", in, req, err)
		}
		if _, err := readByNetHTTP(in); err == nil {
			t.Errorf("%q: net/http reads it; the test expects it refused", in)
		}
	}
}
