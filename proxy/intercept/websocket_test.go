package intercept_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// rawUpgradeUpstream answers the first request on its end of a loopback
// connection with a WebSocket 101 as soon as the head has come, then
// echoes; what it read of the request ("METHOD path", or "nothing" and
// why) goes to the channel.
func rawUpgradeUpstream(t *testing.T) (net.Conn, <-chan string) {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	got := make(chan string, 1)
	go func() {
		defer serverEnd.Close()
		serverEnd.SetDeadline(time.Now().Add(2 * waitLimit))
		br := bufio.NewReader(serverEnd)
		req, err := http.ReadRequest(br)
		if err != nil {
			got <- "nothing: " + err.Error()
			return
		}
		got <- req.Method + " " + req.URL.Path
		io.WriteString(serverEnd, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		io.Copy(serverEnd, br)
	}()
	return proxyEnd, got
}

// TestWebSocketUpgradeWithBody: a WebSocket upgrade request with a body
// (RFC 6455 handshakes have none) is refused with a 400 before anything
// reaches the upstream, and recorded. Tunnelled, the body's writer and
// the tunnel both read the client connection: a data race on its buffers
// (run with -race), and a 101 where the client gets a 400 now.
func TestWebSocketUpgradeWithBody(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, got := rawUpgradeUpstream(t)
	c, sv := r.connectTCP(upEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	head := "POST /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Content-Length: 100000000\r\n\r\n"
	if _, err := io.WriteString(c, head+strings.Repeat("x", 4096)); err != nil {
		t.Fatal(err)
	}
	// More of the body while the answer comes: what the tunnel would
	// read too.
	go func() {
		chunk := []byte(strings.Repeat("y", 16<<10))
		for range 64 {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	hc := newHTTPClient(t, c)
	resp, body := hc.read("the upgrade with a body")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "WebSocket") {
		t.Fatalf("got %d %q, want a 400", resp.StatusCode, body)
	}
	c.Close()
	sv.waitDoneOnce(t)
	select {
	case what := <-got:
		if !strings.HasPrefix(what, "nothing") {
			t.Errorf("the upstream got %q", what)
		}
	case <-time.After(waitLimit):
		t.Fatal("the upstream connection is still open")
	}
	recs := ofKind(r.records(), "http")
	if len(recs) != 1 {
		t.Fatalf("http records %+v, want one", recs)
	}
	if rec := recs[0]; rec.Status != http.StatusBadRequest || rec.Action != "deny" || rec.Result != "denied" ||
		rec.Host != "www.example.test" || rec.Method != "POST" || rec.WebSocket || rec.BytesOut != 0 {
		t.Errorf("record %+v", rec)
	}
	if n := r.ic.Denied(); n != 1 {
		t.Errorf("Denied() = %d, want 1", n)
	}
}

// TestWebSocketHalfClose: a tunnel whose client half-closes after its last
// message still relays what the upstream sends after that, until the
// upstream ends its side; the upstream is told the client is done.
// Cleartext, and bumped (close_notify, then the FIN).
func TestWebSocketHalfClose(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "cleartext", true: "bumped"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, serverEnd := testnet.TCPPair(t)
			var srv net.Conn = serverEnd
			dest := httpDest
			if bumped {
				srv = tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"http/1.1"}})
				dest = tlsDest
			}
			go func() {
				defer srv.Close()
				srv.SetDeadline(time.Now().Add(waitLimit))
				br := bufio.NewReader(srv)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(srv, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				got, _ := io.ReadAll(br) // to the client's end
				time.Sleep(50 * time.Millisecond)
				io.WriteString(srv, "after your end, you sent "+string(got))
			}()
			tcp, sv := r.connectTCP(proxyEnd, dest)
			var c net.Conn = tcp
			halfClose := tcp.CloseWrite
			if bumped {
				tc := bumpClient(t, r, tcp, "www.example.test", "http/1.1")
				c, halfClose = tc, tc.CloseWrite // close_notify; the proxy reads it as the end
			}
			c.SetDeadline(time.Now().Add(waitLimit))
			if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			if _, err := io.WriteString(c, "last words"); err != nil {
				t.Fatal(err)
			}
			if err := halfClose(); err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(br)
			if want := "after your end, you sent last words"; string(rest) != want {
				t.Fatalf("after the half-close the client got %q (%v), want %q", rest, err, want)
			}
			c.Close()
			sv.waitDoneOnce(t)
			recs := ofKind(r.records(), "http")
			if len(recs) != 1 || !recs[0].WebSocket || recs[0].BytesIn != int64(len(rest)) || recs[0].BytesOut != int64(len("last words")) {
				t.Fatalf("http records %+v", recs)
			}
		})
	}
}

// TestWebSocketEndRecorded: a tunnel's record says how the tunnel ended.
// The destination sends 15 bytes after its 101 and then resets the
// connection: the record says reset, bytes_in 15 (before, a 101 was taken
// for a response with no body, ended on arrival, and the record said ok).
// A destination that ends with a FIN, or a client that closes the tunnel
// first, ends it cleanly: ok.
func TestWebSocketEndRecorded(t *testing.T) {
	const msg = "fifteen bytes.."
	for _, tc := range []struct {
		name        string
		reset       bool // the destination's end: a RST, else a FIN
		clientFirst bool // the client closes before the destination ends
		want        string
	}{
		{"destination resets", true, false, "reset"},
		{"destination closes", false, false, "ok"},
		{"client closes", false, true, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, serverEnd := testnet.TCPPair(t)
			go func() {
				defer serverEnd.Close()
				serverEnd.SetDeadline(time.Now().Add(waitLimit))
				br := bufio.NewReader(serverEnd)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(serverEnd, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"+msg)
				if tc.clientFirst {
					io.Copy(io.Discard, br) // until the appliance passes the client's end on
					return
				}
				time.Sleep(50 * time.Millisecond) // the 15 bytes reach the client first
				if tc.reset {
					serverEnd.SetLinger(0)
				}
			}()
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatalf("reading the tunnel: %v", err)
			}
			if !tc.clientFirst {
				io.Copy(io.Discard, br) // to the tunnel's end
			}
			c.Close()
			sv.waitDoneOnce(t)
			recs := ofKind(r.records(), "http")
			if len(recs) != 1 {
				t.Fatalf("http records %+v", recs)
			}
			rec := recs[0]
			t.Logf("record: result %s, bytes_in %d, error %q", rec.Result, rec.BytesIn, rec.Error)
			if !rec.WebSocket || rec.Result != tc.want || rec.BytesIn != int64(len(msg)) || (tc.want == "ok") != (rec.Error == "") {
				t.Errorf("record ws %v result %q bytes_in %d error %q: want a WebSocket, %s, %d", rec.WebSocket, rec.Result, rec.BytesIn, rec.Error, tc.want, len(msg))
			}
		})
	}
}
