package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// upgradeOrigin is an HTTP/1 origin (over TLS with leaf, when not nil)
// that reads one request and sends its request line, Connection and
// Upgrade fields on got; it switches to a WebSocket when asked
// (Connection: Upgrade, Upgrade: websocket), else answers 200 "ok".
func upgradeOrigin(t *testing.T, leaf *tls.Certificate) (net.Conn, <-chan string) {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	got := make(chan string, 1)
	go func() {
		c := h1OriginSide(serverEnd, leaf)
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			close(got)
			return
		}
		got <- fmt.Sprintf("%s %s %s connection=%q upgrade=%q", req.Method, req.URL.Path, req.Proto,
			req.Header.Values("Connection"), req.Header.Values("Upgrade"))
		if strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}()
	return proxyEnd, got
}

// TestHTTP10WebSocketUpgradeIgnored: an HTTP/1.0 request that offers a
// WebSocket upgrade is forwarded without the offer, cleartext and bumped:
// a server must ignore Upgrade in an HTTP/1.0 request (RFC 9110 §7.8), and
// a WebSocket handshake needs HTTP/1.1 (RFC 6455 §4.1). It went upstream
// as an HTTP/1.1 upgrade, and the client was switched to a tunnel. The
// origin now sees a plain GET, the client gets its answer, and the record
// is no WebSocket's.
func TestHTTP10WebSocketUpgradeIgnored(t *testing.T) {
	const head = "GET /ws HTTP/1.0\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	for _, bumped := range []bool{false, true} {
		t.Run(fmt.Sprintf("bumped=%v", bumped), func(t *testing.T) {
			r := newRig(t, testPolicy)
			var leaf *tls.Certificate
			if bumped {
				leaf = r.upLeaf("www.example.test")
			}
			up, originGot := upgradeOrigin(t, leaf)
			got, end := http10Client(t, r, up, bumped, head)
			if line := <-originGot; line != `GET /ws HTTP/1.1 connection=["close"] upgrade=[]` {
				t.Errorf("the origin got %s, want a GET with no upgrade offer", line)
			}
			if _, body, _ := strings.Cut(got, "\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n") || body != "ok" || end != nil {
				t.Errorf("the client got %q (%v), want the origin's 200 ok, then the close", got, end)
			}
			rec := awaitRecord(t, r, "/ws", waitLimit)
			if rec == nil {
				t.Fatal("no record")
			}
			if rec.WebSocket || rec.Status != http.StatusOK || rec.Result != "ok" {
				t.Errorf("record websocket %v, status %d, result %s (%q); want no WebSocket, 200, ok", rec.WebSocket, rec.Status, rec.Result, rec.Error)
			}
		})
	}
}
