package sniff

import (
	"errors"
	"strings"
	"testing"
)

func TestParseHTTPRequest(t *testing.T) {
	tests := []struct {
		in                          string
		method, target, proto, host string
		authority, hostname         string
	}{
		{in: "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
			method: "GET", target: "/", proto: "HTTP/1.1", host: "example.com", authority: "example.com", hostname: "example.com"},
		{in: "POST /a?b=c HTTP/1.0\r\nUser-Agent: x\r\nhOsT: \t Example.COM:8080 \t\r\nX: y\r\n\r\n",
			method: "POST", target: "/a?b=c", proto: "HTTP/1.0", host: "Example.COM:8080", authority: "Example.COM:8080", hostname: "Example.COM"},
		{in: "GET http://abs.example:8080/p?q HTTP/1.1\r\nHost: other.example\r\n\r\n",
			method: "GET", target: "http://abs.example:8080/p?q", proto: "HTTP/1.1", host: "other.example", authority: "abs.example:8080", hostname: "abs.example"},
		{in: "GET HTTPS://user:pw@abs.example HTTP/1.1\r\n\r\n",
			method: "GET", target: "HTTPS://user:pw@abs.example", proto: "HTTP/1.1", authority: "abs.example", hostname: "abs.example"},
		{in: "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
			method: "CONNECT", target: "example.com:443", proto: "HTTP/1.1", host: "example.com:443", authority: "example.com:443", hostname: "example.com"},
		{in: "OPTIONS * HTTP/1.1\nHost: [::1]:8080\n\n",
			method: "OPTIONS", target: "*", proto: "HTTP/1.1", host: "[::1]:8080", authority: "[::1]:8080", hostname: "::1"},
		{in: "DELETE /x HTTP/1.1\r\nAccept: */*\r\n\r\nbody",
			method: "DELETE", target: "/x", proto: "HTTP/1.1"},
		{in: "PROPFIND /dav/ HTTP/1.1\r\nHost: dav.example\r\n",
			method: "PROPFIND", target: "/dav/", proto: "HTTP/1.1", host: "dav.example", authority: "dav.example", hostname: "dav.example"},
		{in: "GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n",
			method: "GET", target: "/\xc3\xa9", proto: "HTTP/1.1", host: "h", authority: "h", hostname: "h"},
		{in: H2Preface, method: "PRI", target: "*", proto: "HTTP/2.0"},
	}
	for _, tc := range tests {
		req, err := ParseHTTPRequest([]byte(tc.in))
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if req.Method != tc.method || req.Target != tc.target || req.Proto != tc.proto || req.Host != tc.host {
			t.Errorf("%q: got %+v", tc.in, req)
		}
		if a, h := req.Authority(), req.Hostname(); a != tc.authority || h != tc.hostname {
			t.Errorf("%q: Authority %q Hostname %q, want %q %q", tc.in, a, h, tc.authority, tc.hostname)
		}
		// Every proper prefix that ends before the deciding line asks for
		// more and never claims success with other fields.
		for k := range len(tc.in) {
			p, err := ParseHTTPRequest([]byte(tc.in[:k]))
			if err == nil {
				if p != req {
					t.Errorf("%q prefix %d: %+v, differs from full %+v", tc.in, k, p, req)
				}
				continue
			}
			var nm *NeedMoreError
			if !errors.As(err, &nm) || nm.Need <= k {
				t.Errorf("%q prefix %d: %v", tc.in, k, err)
			}
			if p.Method != "" && p.Method != req.Method {
				t.Errorf("%q prefix %d: partial method %q", tc.in, k, p.Method)
			}
		}
	}
}

func TestParseHTTPRequestNotHTTP(t *testing.T) {
	for _, in := range []string{
		"get / HTTP/1.1\r\n",                // methods are case-sensitive
		"FOO / HTTP/1.1\r\n",                // unknown method
		"GETX / HTTP/1.1\r\n",               // no such method
		"GET /\r\n",                         // HTTP/0.9
		"OPTIONS rtsp://cam/s RTSP/1.0\r\n", // RTSP shares methods
		"OPTIONS sip:a@b SIP/2.0\r\n",       // so does SIP
		"GET key\r\n",                       // a Redis inline command
		"SSH-2.0-OpenSSH_9.6\r\n",
		"\x16\x03\x01\x02\x00",
		"EHLO mail.example\r\n",
		"PROPPATCHX /",
		"A",
		"",
	} {
		_, err := ParseHTTPRequest([]byte(in))
		if in == "" || in == "A" {
			// Could both still be a method ("" trivially; no method starts
			// with A, so "A" must be ErrNotHTTP).
			if in == "" && !errors.Is(err, ErrNeedMore) {
				t.Errorf("%q: %v, want need more", in, err)
			}
			if in == "A" && !errors.Is(err, ErrNotHTTP) {
				t.Errorf("%q: %v, want ErrNotHTTP", in, err)
			}
			continue
		}
		if !errors.Is(err, ErrNotHTTP) {
			t.Errorf("%q: err = %v, want ErrNotHTTP", in, err)
		}
	}
}

// A known method and a space begin a first line that names HTTP but is not
// a valid request line: lenient servers take some of these (nginx: several
// spaces, a space after the version), so it is malformed HTTP, never "not
// HTTP", and the method is kept.
func TestParseHTTPRequestMalformed(t *testing.T) {
	for _, in := range []string{
		"GET  / HTTP/1.1\r\nHost: denied.example\r\n\r\n", // two spaces
		"GET / HTTP/2.0\r\n",                              // not 1.x
		"GET / HTTP/1.x\r\n",                              // version digit
		"GET / HTTP/1.1 \r\n",                             // junk after version
		"GET / http/1.1\r\n",                              // lower-case version
		"GET / HTTP/1.1\rX\n",                             // CR not followed by LF
		"GET /a\x00b HTTP/1.1\r\n",                        // control byte in target
		"GET /a\tb HTTP/1.1\r\n",
		"PRI / HTTP/1.1\r\n",               // PRI is only the h2 preface
		"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", // wrong preface tail
	} {
		req, err := ParseHTTPRequest([]byte(in))
		if !errors.Is(err, ErrMalformedHTTP) || req.Method == "" {
			t.Errorf("%q: %+v, %v; want ErrMalformedHTTP with the method", in, req, err)
		}
		// Until its line is whole, it could still be anything.
		line := in[:strings.IndexByte(in, '\n')]
		if _, err := ParseHTTPRequest([]byte(line)); !errors.Is(err, ErrNeedMore) && !errors.Is(err, ErrMalformedHTTP) {
			t.Errorf("%q without its LF: %v", in, err)
		}
	}
}

func TestParseHTTPRequestNeedMore(t *testing.T) {
	for _, tc := range []struct {
		in          string
		method, tgt string
	}{
		{"G", "", ""},
		{"CONNEC", "", ""},
		{"GET", "", ""},
		{"GET ", "GET", ""},
		{"GET /path", "GET", ""},
		{"GET / HTTP/1", "GET", ""},
		{"GET / HTTP/1.1", "GET", ""},
		{"GET / HTTP/1.1\r", "GET", ""},
		{"GET / HTTP/1.1\r\n", "GET", "/"},
		{"GET / HTTP/1.1\r\nAccept: */*\r\n", "GET", "/"},
		{"GET / HTTP/1.1\r\nHost: partial", "GET", "/"},
		{"PRI * HTTP/2.0\r\n", "PRI", ""},
		{"GET  /", "GET", ""},
		{"GET / HTTP/1.1\rX", "GET", ""},
	} {
		req, err := ParseHTTPRequest([]byte(tc.in))
		var nm *NeedMoreError
		if !errors.As(err, &nm) || nm.Need <= len(tc.in) {
			t.Errorf("%q: err = %v, want NeedMoreError beyond the input", tc.in, err)
			continue
		}
		if req.Method != tc.method || req.Target != tc.tgt || req.Host != "" {
			t.Errorf("%q: partial %+v, want method %q target %q", tc.in, req, tc.method, tc.tgt)
		}
	}
}

func BenchmarkParseHTTPRequest(b *testing.B) {
	in := []byte("GET /index.html HTTP/1.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\nHost: www.example.com\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseHTTPRequest(in); err != nil {
			b.Fatal(err)
		}
	}
}
