package intercept_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// upgradingOrigin is an origin that answers its first request with a
// WebSocket 101 carrying connection (its Connection field) and bytes of
// the tunnel after it, whatever the request asked; later says what it
// read after that (a request written after the 101 is tunnel bytes to it).
// proxyEnd is the appliance's end of the connection to it.
func upgradingOrigin(t *testing.T, connection string) (proxyEnd net.Conn, later <-chan string) {
	t.Helper()
	proxyEnd, serverEnd := testnet.TCPPair(t)
	got := make(chan string, 1)
	go func() {
		defer serverEnd.Close()
		serverEnd.SetDeadline(time.Now().Add(waitLimit))
		br := bufio.NewReader(serverEnd)
		if _, err := http.ReadRequest(br); err != nil {
			got <- "no request: " + err.Error()
			return
		}
		io.WriteString(serverEnd, "HTTP/1.1 101 Switching Protocols\r\n"+connection+"\r\nUpgrade: websocket\r\n\r\nraw tunnel bytes")
		b, _ := io.ReadAll(br)
		got <- string(b)
	}()
	return proxyEnd, got
}

// TestUnsolicited101Refused: an origin answering a request that offered no
// upgrade with a WebSocket 101 had the appliance tunnel: an HTTP/1
// client's next request (to a name the policy denies) went to the origin
// as tunnel bytes, never decided nor recorded, and the record said the
// client opened a WebSocket; an HTTP/2 client got the tunnel's bytes as a
// 200 body. Such a 101 now gets a 502 and an error record, and nothing
// after it reaches the origin.
func TestUnsolicited101Refused(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		name := map[bool]string{false: "HTTP/1 client", true: "h2c client"}[h2]
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, later := upgradingOrigin(t, "Connection: Upgrade")
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			var status int
			var body []byte
			if h2 {
				cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://www.example.test/", nil)
				resp, err := cc.RoundTrip(req)
				if err != nil {
					t.Fatalf("round trip: %v", err)
				}
				body, _ = io.ReadAll(resp.Body)
				status = resp.StatusCode
				cc.Close()
			} else {
				hc := newHTTPClient(t, c)
				resp, b := hc.do("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
				status, body = resp.StatusCode, []byte(b)
				// A client that went on would have its next request
				// tunnelled; it must reach no one.
				io.WriteString(c, "GET /denied HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
				c.Close()
			}
			sv.waitDoneOnce(t)
			if status != http.StatusBadGateway {
				t.Errorf("client got %d %q, want the appliance's 502", status, body)
			}
			if got := <-later; got != "" {
				t.Errorf("after its 101 the origin read %q, want nothing", got)
			}
			// The HTTP/1 client's next request is decided on its own (a
			// deny record for evil.example.test).
			var refused bool
			for _, rec := range ofKind(r.records(), "http") {
				if rec.WebSocket {
					t.Errorf("http record for %s says a WebSocket was opened", rec.Host)
				}
				if rec.Host == "www.example.test" {
					refused = rec.Status == http.StatusBadGateway && rec.Result == "error"
					if !refused {
						t.Errorf("http record status %d result %q error %q, want 502, error", rec.Status, rec.Result, rec.Error)
					}
				}
			}
			if !refused {
				t.Errorf("no http record of the refused 101; records %+v", r.records())
			}
		})
	}
}

// TestWebSocket101WithoutConnectionUpgradeRefused: an origin answering a
// client's WebSocket offer with a 101 whose Connection field is
// "keep-alive", not "Upgrade" (an invalid handshake, RFC 6455 §4.2.2),
// had the appliance tunnel, with a "Connection: Upgrade" the origin never
// sent: the response's hop-by-hop fields were rewritten before the 101
// was checked. Such a 101 gets a 502 and an error record, and the origin
// reads nothing after it.
func TestWebSocket101WithoutConnectionUpgradeRefused(t *testing.T) {
	r := newRig(t, testPolicy)
	proxyEnd, later := upgradingOrigin(t, "Connection: keep-alive")
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	hc := newHTTPClient(t, c)
	resp, body := hc.do("GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	io.WriteString(c, "tunnelled?")
	c.Close()
	sv.waitDoneOnce(t)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("client got %d (Connection %q, Upgrade %q) %q, want the appliance's 502",
			resp.StatusCode, resp.Header.Get("Connection"), resp.Header.Get("Upgrade"), body)
	}
	if got := <-later; got != "" {
		t.Errorf("after its 101 the origin read %q, want nothing", got)
	}
	var found bool
	for _, rec := range ofKind(r.records(), "http") {
		// Not "tunnelled?", which after the 502 is a head cut short by
		// the client's close: no request was read from it.
		if rec.Host != "www.example.test" || rec.Method == "" {
			continue
		}
		found = true
		if rec.WebSocket || rec.Status != http.StatusBadGateway || rec.Result != "error" {
			t.Errorf("http record websocket %v status %d result %q error %q, want no WebSocket, 502, error",
				rec.WebSocket, rec.Status, rec.Result, rec.Error)
		}
	}
	if !found {
		t.Errorf("no http record of the refused 101; records %+v", r.records())
	}
}
