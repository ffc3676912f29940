package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestReloadNameCheckHostTrailingDot: a request, or a WebSocket tunnel,
// whose Host is the connection's own name written with a trailing dot
// ("www.example.test."), refused or ended after a reload by that name's
// destination check: the name is the Host's, as the policy and the check
// take names (case aside, one trailing dot dropped), so its record gives
// that check as its own, dest_check mismatch and the check's error, as one
// without the dot does. It was taken for another Host's: the request sent
// after the reload had no dest_check, and the tunnel's record said
// dest_check ok next to "fails the destination check" (review r4s28 F1).
// (The request waiting for its dial: TestReloadNameCheckRefusedRedialRecord.)
// Here the Host's own check passes, as one resting on the appliance's own
// lookup does across a reload, and the name's fails.
func TestReloadNameCheckHostTrailingDot(t *testing.T) {
	const host, checkErr = "www.example.test.", "www.example.test resolves to 203.0.113.9"
	for _, tunnel := range []bool{false, true} {
		t.Run(map[bool]string{false: "request", true: "tunnel"}[tunnel], func(t *testing.T) {
			r, holder := wwwCheckFailsRig(t)
			proxyEnd, serverEnd := testnet.TCPPair(t)
			go tlsH1Origin(r.strangerLeaf("www.example.test"), serverEnd, func(end *tls.Conn, br *bufio.Reader, req *http.Request) bool {
				if req.Header.Get("Upgrade") == "" {
					return false
				}
				io.WriteString(end, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				io.Copy(end, br) // an echo
				return true
			})
			raw, sv := r.connectTCP(proxyEnd, tlsDest)
			hc := newHTTPClient(t, bumpClient(t, r, raw, "www.example.test", "http/1.1"))
			if resp, body := hc.do("GET /before HTTP/1.1\r\nHost: " + host + "\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
			}
			path := "/after"
			if tunnel {
				path = "/ws"
				io.WriteString(hc.c, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
					"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
				if resp, err := http.ReadResponse(hc.br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("the upgrade: %v %v", resp, err)
				}
				io.WriteString(hc.c, "ping")
				if _, err := io.ReadFull(hc.br, make([]byte, 4)); err != nil {
					t.Fatalf("the echo before the reload: %v", err)
				}
			}
			after := reloadTo(t, holder, fmt.Sprintf(legacyPolicy, "destination_check: dns"))
			if tunnel {
				io.WriteString(hc.c, "ping") // decided again, and ended
				hc.wantClosed()
			} else if resp, body := hc.do("GET /after HTTP/1.1\r\nHost: " + host + "\r\n\r\n"); resp.StatusCode != http.StatusForbidden ||
				!strings.Contains(body, "the destination address is not one this name resolves to") {
				t.Errorf("the request after the reload: %d %q, want 403 for the destination check", resp.StatusCode, body)
			}
			raw.Close()
			sv.waitDoneOnce(t)
			var found bool
			for _, rec := range ofKind(r.records(), "http") {
				if rec.Path != path {
					continue
				}
				found = true
				if rec.Action != "deny" || rec.Result != "denied" || rec.Policy != after.ID() || rec.DestCheck != "mismatch" || !strings.Contains(rec.Error, checkErr) {
					t.Errorf("%s record: action %s result %s policy %q dest_check %q error %q; want denied under %q, dest_check mismatch, the name's check's error",
						path, rec.Action, rec.Result, rec.Policy, rec.DestCheck, rec.Error, after.ID())
				}
			}
			if !found {
				t.Fatalf("no record of %s: %+v", path, r.records())
			}
		})
	}
}
