package intercept_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// cannedUpstream answers every request on its end of a loopback
// connection with answer, after reading the request whole.
func cannedUpstream(t *testing.T, answer string) net.Conn {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	go func() {
		defer serverEnd.Close()
		serverEnd.SetDeadline(time.Now().Add(2 * waitLimit))
		br := bufio.NewReader(serverEnd)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(serverEnd, answer); err != nil {
				return
			}
		}
	}()
	return proxyEnd
}

// TestUpgradeOfferRelayed: a 426 Upgrade Required offering a WebSocket
// ("Connection: keep-alive, Upgrade", "Upgrade: websocket") is an ordinary
// response. goproxy took every response with those fields for a WebSocket
// handshake: it dropped this one and closed the client connection, while
// the record said it was delivered. The client must get it, body and all,
// without the upgrade offer (hop-by-hop, as its Connection field is), and
// the connection goes on.
func TestUpgradeOfferRelayed(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd := cannedUpstream(t, "HTTP/1.1 426 Upgrade Required\r\nConnection: keep-alive, Upgrade\r\n"+
		"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello")
	c, sv := r.connectTCP(upEnd, httpDest)
	hc := newHTTPClient(t, c)
	for i := range 2 { // the second on the same connection
		resp, body := hc.do("GET /ws HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		if resp.StatusCode != http.StatusUpgradeRequired || body != "hello" {
			t.Fatalf("response %d: %d %q, want 426 \"hello\"", i, resp.StatusCode, body)
		}
		if u, conn := resp.Header.Values("Upgrade"), resp.Header.Values("Connection"); len(u) != 0 || len(conn) != 0 {
			t.Errorf("response %d: Upgrade %q, Connection %q: want the upgrade offer dropped, and Connection (hop-by-hop)", i, u, conn)
		}
	}
	c.Close()
	sv.waitDoneOnce(t)
	recs := ofKind(r.records(), "http")
	if len(recs) != 2 {
		t.Fatalf("http records %+v, want two", recs)
	}
	for _, rec := range recs {
		if rec.Status != http.StatusUpgradeRequired || rec.Result != "ok" || rec.BytesIn != 5 || rec.WebSocket {
			t.Errorf("record %+v, want a 426 delivered with its 5 bytes", rec)
		}
	}
}
