package intercept_test

import (
	"strings"
	"testing"
)

// TestRequestConnectionOptionsDropped: the fields a request's Connection
// field names are the client's connection's alone (RFC 9110 §7.6.1), as
// Upgrade is, unless the appliance tunnels it (a WebSocket handshake).
// goproxy dropped Connection and sent what it named on: an h2c upgrade
// offer (Upgrade: h2c, HTTP2-Settings) reached the origin, whose 101 the
// appliance then had to refuse with a 502. Now they go with it; a
// WebSocket handshake keeps its Connection: Upgrade and Upgrade, and loses
// only the other fields its Connection names. The request's framing and
// the fields named in it that the appliance reads (Content-Length, Expect)
// stay, whatever Connection says.
func TestRequestConnectionOptionsDropped(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			got := forwardedHead(t, bumped, "POST /a HTTP/1.1\r\nHost: www.example.test\r\n"+
				"Connection: Upgrade, HTTP2-Settings, x-hop, keep-alive, Content-Length\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"+
				"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nhi")
			head := strings.ToLower(got)
			for _, gone := range []string{"\nupgrade:", "\nhttp2-settings:", "\nx-hop:", "\nkeep-alive:", "\nconnection:"} {
				if strings.Contains(head, gone) {
					t.Errorf("the origin got %q, a field the client's Connection named", strings.TrimPrefix(gone, "\n"))
				}
			}
			for _, kept := range []string{"\nx-end: 2", "\ncontent-length: 2"} {
				if !strings.Contains(head, kept) {
					t.Errorf("the origin's head %q lacks %q", got, strings.TrimPrefix(kept, "\n"))
				}
			}
		})
	}
}

// TestWebSocketHandshakeKeepsUpgrade: a WebSocket handshake's Connection
// names Upgrade, which goes on, with Connection: the origin must see the
// offer to accept it. Another field it names does not.
func TestWebSocketHandshakeKeepsUpgrade(t *testing.T) {
	// The origin answers 200: no upgrade.
	got := forwardedHead(t, false, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade, X-Hop\r\nUpgrade: websocket\r\n"+
		"X-Hop: 1\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	head := strings.ToLower(got)
	if !strings.Contains(head, "\nupgrade: websocket") || !strings.Contains(head, "\nconnection: upgrade") {
		t.Errorf("the origin's head %q lacks the WebSocket offer", got)
	}
	if strings.Contains(head, "\nx-hop:") {
		t.Errorf("the origin's head %q has X-Hop, which the client's Connection named", got)
	}
}
