package intercept_test

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// A head pipelined behind a request, whose start came with it (in the
// same write, or before the response ended) and whose rest never comes,
// has the same requestHeadTimeout as any head, from the end of the
// previous response: the connection ends then, with the record a head
// left unfinished gets. Before, goproxy's readers held its start, no read
// of the connection brought a byte, and no deadline was armed: the
// connection waited for the rest for as long as the client kept it open.
// Requests pipelined whole are all answered, in order. So too behind a
// chunked body: before, the boundaries were given up for the connection
// after one, and the partial head waited for the idle timeout, with no
// record of it on a cleartext connection. So too for a client
// that negotiated h2 by ALPN and then speaks HTTP/1, which goproxy's
// HTTP/2 proxy serves with its HTTP/1 loop: before, its connection was
// not bounded, and the partial head waited for the idle timeout, the
// record saying the connection was closed idle.
func TestPipelinedPartialHead(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetRequestHeadTimeout(timeout)()
	defer intercept.SetClientIdleTimeout(10 * waitLimit)() // not what ends it
	const host = "Host: www.example.test\r\n"
	partial := "GET /c HTTP/1.1\r\nHost: www.exa"

	for _, tc := range []struct {
		name   string
		bumped bool
		h2     bool     // bumped: the client offers h2 alone, and the upstream h2 too
		first  string   // requests whole, and the start of one more
		paths  []string // what the whole ones asked for
	}{
		{"cleartext", false, false, "GET /a HTTP/1.1\r\n" + host + "\r\n" + partial, []string{"/a"}},
		{"cleartext, two whole", false, false, "GET /a HTTP/1.1\r\n" + host + "\r\nGET /b HTTP/1.1\r\n" + host + "\r\n" + partial, []string{"/a", "/b"}},
		{"cleartext, after a body", false, false, "POST /a HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello" + partial, []string{"/a"}},
		{"cleartext, after a chunked body", false, false, "POST /a HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + partial, []string{"/a"}},
		{"cleartext, after chunks, extensions and a trailer", false, false, "POST /a HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n" +
			"5;a=b\r\nhello\r\n00B \r\n, world 123\r\n0\r\nX-Sum: 1\r\n\r\n" + partial, []string{"/a"}},
		{"cleartext, bare line ends", false, false, "GET /a HTTP/1.1\n" + host[:len(host)-2] + "\n\n" + partial, []string{"/a"}},
		{"bumped", true, false, "GET /a HTTP/1.1\r\n" + host + "\r\n" + partial, []string{"/a"}},
		{"bumped, after a chunked body", true, false, "POST /a HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + partial, []string{"/a"}},
		{"bumped, h2 negotiated", true, true, "GET /a HTTP/1.1\r\n" + host + "\r\n" + partial, []string{"/a"}},
		{"bumped, h2 negotiated, after a body", true, true, "POST /a HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello" + partial, []string{"/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			var c net.Conn
			kind := "http"
			upProto := " HTTP/1.1" // as the upstream saw the requests
			if tc.bumped {
				offer, upProtos := "http/1.1", []string{"http/1.1"}
				if tc.h2 {
					offer, upProtos, upProto = "h2", []string{"h2", "http/1.1"}, " HTTP/2.0"
				}
				upEnd, _ := r.startUpstreamTCP(r.upLeaf("www.example.test"), upProtos...)
				tcp, _ := r.connectTCP(upEnd, tlsDest)
				tlsc := tls.Client(tcp, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{offer}})
				if err := tlsc.Handshake(); err != nil {
					t.Fatal(err)
				}
				if got := tlsc.ConnectionState().NegotiatedProtocol; got != offer {
					t.Fatalf("negotiated %q, want %q", got, offer)
				}
				c, kind = tlsc, "tls"
			} else {
				upEnd, _ := r.startUpstreamTCP(nil)
				c, _ = r.connectTCP(upEnd, httpDest)
			}
			h := newHTTPClient(t, c)
			if _, err := io.WriteString(c, tc.first); err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.paths {
				if resp, body := h.read(p); resp.StatusCode != 200 || !strings.Contains(body, p+upProto) {
					t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
				}
			}
			wantEnded(t, c, time.Now(), timeout*3/4)
			wantRecordOf(t, r, kind, "request head not complete")
			for _, rec := range ofKind(r.records(), "http") {
				// The head left unfinished is none of the requests
				// answered: its record names none of theirs.
				if rec.Result == "timeout" && (rec.Method != "" || rec.Path != "") {
					t.Errorf("the unfinished head's record names %s %s", rec.Method, rec.Path)
				}
			}
		})
	}
}
