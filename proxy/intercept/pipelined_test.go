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
// Requests pipelined whole are all answered, in order.
func TestPipelinedPartialHead(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetRequestHeadTimeout(timeout)()
	defer intercept.SetClientIdleTimeout(10 * waitLimit)() // not what ends it
	const host = "Host: www.example.test\r\n"
	partial := "GET /c HTTP/1.1\r\nHost: www.exa"

	for _, tc := range []struct {
		name   string
		bumped bool
		first  string   // requests whole, and the start of one more
		paths  []string // what the whole ones asked for
	}{
		{"cleartext", false, "GET /a HTTP/1.1\r\n" + host + "\r\n" + partial, []string{"/a"}},
		{"cleartext, two whole", false, "GET /a HTTP/1.1\r\n" + host + "\r\nGET /b HTTP/1.1\r\n" + host + "\r\n" + partial, []string{"/a", "/b"}},
		{"cleartext, after a body", false, "POST /a HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello" + partial, []string{"/a"}},
		{"cleartext, bare line ends", false, "GET /a HTTP/1.1\n" + host[:len(host)-2] + "\n\n" + partial, []string{"/a"}},
		{"bumped", true, "GET /a HTTP/1.1\r\n" + host + "\r\n" + partial, []string{"/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			var c net.Conn
			kind := "http"
			if tc.bumped {
				upEnd, _ := r.startUpstreamTCP(r.upLeaf("www.example.test"), "http/1.1")
				tcp, _ := r.connectTCP(upEnd, tlsDest)
				c, kind = tls.Client(tcp, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}), "tls"
			} else {
				upEnd, _ := r.startUpstreamTCP(nil)
				c, _ = r.connectTCP(upEnd, httpDest)
			}
			h := newHTTPClient(t, c)
			if _, err := io.WriteString(c, tc.first); err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.paths {
				if resp, body := h.read(p); resp.StatusCode != 200 || !strings.Contains(body, p+" HTTP/1.1") {
					t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
				}
			}
			wantEnded(t, c, time.Now(), timeout*3/4)
			wantRecordOf(t, r, kind, "request head not complete")
		})
	}
}
