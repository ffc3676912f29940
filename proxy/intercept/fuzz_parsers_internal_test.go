package intercept

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// Fuzz targets for the hand-written parsers of network bytes in
// proxy/intercept that the H1 and H2 targets (fuzz_internal_test.go,
// fuzzh2_internal_test.go) never reach: the client's Host / :authority
// (canonicalHost, host.go), the origin's response heads (headScan,
// h1head.go) and the request target written to the origin
// (prepareForward, requestguard.go). Each checks its parser against
// net/http's reading of the same bytes, since the defence each makes is
// that the appliance and the other end read them alike.

// FuzzCanonicalHostIsSentAndMatched: an authority canonicalHost accepts is
// one net/http can send and an origin reads back as the same Host; the
// name the policy decides on (hostOnly) is the name the origin reads from
// it; and a rule naming what the origin reads matches the decided name.
// A split here is a policy bypass: decided on one name, another sent.
func FuzzCanonicalHostIsSentAndMatched(f *testing.F) {
	for _, s := range []string{
		// Names, ports, case, one trailing dot.
		"example.com", "example.com:443", "EXAMPLE.com.", "a.example:", "x.example:0080", "x.example:65536",
		"a_b.example", "-a.example", "a.b.c.d.example:8080",
		// IDNA: mapped, Punycode, refused.
		"bücher.example", "bücher.example:8080", "xn--bcher-kva.example", "ｅｘａｍｐｌｅ。com", "例え.テスト",
		"a\u3002b", "ß.example", "xn--.example", "xn--a.example", "a.-b.example", "BÜCHER.example",
		// Address literals, zones, brackets.
		"[2001:db8::1]", "[2001:db8::1]:80", "[fe80::1%25eth0]", "[fe80::1%eth0]:80", "1.2.3.4:80", "[::ffff:1.2.3.4]",
		"[1.2.3.4]", "[evil.example%.allowed.example]", "[::1", "::1", "01.2.3.4", "1.2.3.4.",
		// Splits an origin may read otherwise.
		"evil.example:1:2", "evil.example..", ".evil.example", "a@b.example", "a,b.example", "a b", "a\tb",
		"a/b.example", "a\\b.example", "a?b", "a#b", "a%2eb", ":80", "", "[", "]",
		// Lengths at the bounds (nameLength, idnaLength).
		strings.Repeat("a", 63) + ".example", strings.Repeat("a", 64) + ".example",
		strings.Repeat("a.", 126) + "a", strings.Repeat("a.", 127) + "a", strings.Repeat("ü", 64) + ".example",
		strings.Repeat("ü", 63) + ".example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, authority string) {
		canon, err := canonicalHost(authority)
		if err != nil {
			return
		}
		again, err := canonicalHost(canon)
		if err != nil || again != canon {
			t.Fatalf("canonicalHost(%q) = %q; of that: %q, %v", authority, canon, again, err)
		}
		host := hostOnly(canon)
		if sniff.EmptyLabel(host) {
			t.Fatalf("canonicalHost(%q) = %q: empty label in %q", authority, canon, host)
		}
		if !utf8.ValidString(canon) || !httpguts.ValidHostHeader(canon) {
			t.Fatalf("canonicalHost(%q) = %q, which net/http's server refuses as a Host", authority, canon)
		}
		if strings.ContainsAny(host, " \t\r\n/\\?#@,%") {
			t.Fatalf("canonicalHost(%q) = %q: decided name %q has a separator", authority, canon, host)
		}

		// What the transport writes and an origin (net/http) reads.
		req := &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: canon, Path: "/"},
			Host: canon, Header: http.Header{}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
		var buf bytes.Buffer
		if err := req.Write(&buf); err != nil {
			t.Fatalf("canonicalHost(%q) = %q, which net/http cannot write: %v", authority, canon, err)
		}
		got, err := http.ReadRequest(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("canonicalHost(%q) = %q, written as %q, which net/http cannot read: %v", authority, canon, buf.String(), err)
		}
		if got.Host != canon {
			t.Fatalf("canonicalHost(%q) = %q (decided as %q), but net/http sent Host %q", authority, canon, host, got.Host)
		}
		// The name an origin takes from that Host, by net/url's rule.
		originName := (&url.URL{Host: got.Host}).Hostname()
		if originName != host {
			t.Fatalf("canonicalHost(%q) = %q: decided as %q, an origin reads the name %q", authority, canon, host, originName)
		}

		// The policy: a rule naming what the origin reads matches the
		// decided name; an address matches no domain rule at all.
		if host == "" {
			return
		}
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Zone() != "" {
				t.Fatalf("canonicalHost(%q) = %q: an address with a zone", authority, canon)
			}
			return
		}
		rule := strings.ToLower(strings.TrimSuffix(originName, "."))
		pol, err := policy.Parse("fuzz.yaml", []byte(fmt.Sprintf(
			"policy:\n  default: allow\n  rules:\n    - name: exact\n      domains: [%q]\n      action: deny\n", rule)))
		if err != nil {
			// A name no rule can hold (policy.md: ASCII host names) is
			// one no rule can be written for either: nothing to compare.
			return
		}
		d := pol.Decide(policy.Subject{Protocol: policy.ProtoHTTP, Domain: host})
		if d.Rule != "exact" {
			t.Fatalf("canonicalHost(%q) = %q: decided as %q, which the rule for %q (what the origin reads) does not match: %+v",
				authority, canon, host, rule, d)
		}
	})
}

// FuzzHeadScanAgreesWithNetHTTP: headScan (h1head.go) follows the
// response heads an origin sends while exchangeHead (h1client.go) reads
// them, and says whether the final one has faulty framing
// (Transfer-Encoding with Content-Length, or Transfer-Encoding in
// HTTP/1.0), which ends the upstream connection. The origin's bytes are
// read as exchangeHead reads them (headLimitedConn, a 4 KiB bufio.Reader,
// http.ReadResponse until a final response, at most max1xx informational
// ones), in reads of sizes the fuzzer chooses. The verdict must be what
// net/http's own reader of fields (net/textproto, which http.ReadResponse
// uses before it drops the framing fields) finds in the same head, with a
// field name followed by spaces taken for that name (see the oracle).
func FuzzHeadScanAgreesWithNetHTTP(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
		"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nContent-Length: 1\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" +
			"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding:chunked\r\nContent-Length:3\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding :chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encodings: chunked\r\nContent-Lengths: 3\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\rContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
	} {
		f.Add([]byte(s), []byte{})
		f.Add([]byte(s), []byte{0, 3, 7, 1, 0, 20})
	}
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		if len(data) > 16<<10 {
			return
		}
		conn := &fuzzConn{data: data, sizes: sizes}
		src := &headLimitedConn{Conn: conn, left: maxResponseHead, limited: true}
		br := bufio.NewReaderSize(src, 4<<10)
		req, _ := http.NewRequest("GET", "http://a.example/", nil)
		var resp *http.Response
		n := 0
		for ; ; n++ {
			if _, err := br.Peek(1); err != nil {
				return
			}
			var err error
			if resp, err = http.ReadResponse(br, req); err != nil {
				return
			}
			if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			if n == max1xx {
				return // errTooMany1xx
			}
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return // a tunnel: never a kept connection
		}
		got := src.scan.faulty(n, resp)

		// The oracle: the same heads read with net/textproto.
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(data)))
		var h textproto.MIMEHeader
		for i := 0; i <= n; i++ {
			if _, err := tp.ReadLine(); err != nil {
				t.Fatalf("oracle: status line %d: %v", i, err)
			}
			var err error
			if h, err = tp.ReadMIMEHeader(); err != nil {
				t.Fatalf("oracle: head %d: %v", i, err)
			}
		}
		// net/http keeps "Transfer-Encoding :" as a field of its own
		// (golang/go#34540) and frames by the rest; the scan counts it as
		// the framing field it names, for a laxer reader after the
		// appliance (h1head.go): so does the oracle.
		var cl, te bool
		for k := range h {
			switch http.CanonicalHeaderKey(strings.TrimRight(k, " ")) {
			case "Content-Length":
				cl = true
			case "Transfer-Encoding":
				te = true
			}
		}
		if want := te && (cl || !resp.ProtoAtLeast(1, 1)); got != want {
			t.Fatalf("head %d (%s): scan says faulty=%v, the head has Content-Length %v, Transfer-Encoding %v: want %v; input %q",
				n, resp.Proto, got, cl, te, want, data)
		}
		// Nor does the scan take a head read whole for one it did not
		// see end (which it reports as faulty).
		if src.scan.heads <= n {
			t.Fatalf("head %d read by net/http, the scan saw %d end; input %q", n, src.scan.heads, data)
		}
	})
}

// FuzzForwardTargetRoundTrips: a client's request target (an HTTP/2 :path
// may hold a space and bytes over 0x7f) goes through prepareForward
// (escapeQuery) and net/http's Request.Write into the HTTP/1 request line
// the origin reads (h1client.go writeRequest). That line has three tokens
// and no byte that splits it; net/http's parser reads back the same target
// (path, query as escaped, Host); the escaped query decodes to what the
// client sent; and a body on a method whose content has no meaning goes
// with "Connection: close" (closeAfter).
func FuzzForwardTargetRoundTrips(f *testing.F) {
	for _, s := range []string{
		"/", "/a?b=c", "/a?x HTTP/1.0 X", "/a b?c d", "/?\x80\xff", "/a#b?c#d", "/%zz?%zz", "/a?b\"<>[]^`{|}\\",
		"//evil.example/x", "/a/../b", "*", "/\u00e9?\u00e9", "/?%41%", "/?a=1&b=%2", "/?\x7f", "/a?",
		"http://a.example/p?q r", "/a?b\r\nX: y",
	} {
		f.Add(s, "GET", false)
		f.Add(s, "POST", true)
		f.Add(s, "DELETE", true)
	}
	f.Fuzz(func(t *testing.T, path, method string, body bool) {
		// As x/net's server takes :path and :method.
		if path == "" || !httpguts.ValidHeaderFieldValue(path) || method == "" || !validMethodToken(method) {
			return
		}
		u, err := url.ParseRequestURI(path)
		if err != nil {
			return
		}
		if u.Opaque != "" {
			return // refuseOddTarget answers 400: nothing reaches the origin
		}
		u.Scheme, u.Host = "https", "a.example"
		sent := u.RawQuery
		req := &http.Request{Method: method, URL: u, Host: "a.example", Header: http.Header{},
			Proto: "HTTP/2.0", ProtoMajor: 2, Body: http.NoBody}
		if body {
			req.Body, req.ContentLength = io.NopCloser(strings.NewReader("x")), 1
		}
		fwd := prepareForward(req)
		q := fwd.URL.RawQuery
		for i := 0; i < len(q); i++ {
			if !queryByte(q[i]) {
				t.Fatalf(":path %q: escaped query %q holds byte %#x", path, q, q[i])
			}
		}
		if again := escapeQuery(q); again != q {
			t.Fatalf(":path %q: query escaped twice %q, once %q", path, again, q)
		}
		if want, err := url.PathUnescape(sent); err == nil {
			if dec, err := url.PathUnescape(q); err != nil || dec != want {
				t.Fatalf(":path %q: query %q escaped as %q, which decodes to %q (%v), not %q", path, sent, q, dec, err, want)
			}
		}
		var buf bytes.Buffer
		if err := fwd.Write(&buf); err != nil {
			return // net/http refuses to write it: nothing reaches the origin
		}
		line, _, _ := strings.Cut(buf.String(), "\r\n")
		toks := strings.Split(line, " ")
		if len(toks) != 3 || toks[0] != method || toks[2] != "HTTP/1.1" {
			t.Fatalf(":path %q: request line %q has %d tokens", path, line, len(toks))
		}
		for i := 0; i < len(toks[1]); i++ {
			if c := toks[1][i]; c <= ' ' || c >= 0x7f {
				t.Fatalf(":path %q: request target %q holds byte %#x", path, toks[1], c)
			}
		}
		got, err := http.ReadRequest(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf(":path %q: written as %q, which net/http cannot read: %v", path, line, err)
		}
		wantPath := u.Path
		if wantPath == "" {
			wantPath = "/" // net/http writes "/" for a target without a path
		}
		if got.Method != method || got.URL.Path != wantPath || got.URL.RawQuery != q || got.Host != "a.example" {
			t.Fatalf(":path %q: origin reads %s path %q query %q host %q; sent path %q query %q", path,
				got.Method, got.URL.Path, got.URL.RawQuery, got.Host, u.Path, q)
		}
		if wantClose := closeAfter(req); got.Close != wantClose {
			t.Fatalf(":path %q, %s with body %v: origin reads close=%v, want %v", path, method, body, got.Close, wantClose)
		}
	})
}

// validMethodToken reports whether m is an HTTP token, as x/net's server
// requires of :method.
func validMethodToken(m string) bool {
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return true
}
