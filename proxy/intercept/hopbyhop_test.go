package intercept_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// startCannedOrigin is an HTTP/1 origin on loopback that answers every
// request with answer, and ends a connection after an answer that says
// "Connection: close".
func startCannedOrigin(t *testing.T, answer string) net.Listener {
	t.Helper()
	return testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) {
		c.SetDeadline(time.Now().Add(waitLimit))
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, answer); err != nil || strings.Contains(answer, "Connection: close") {
				return
			}
		}
	})
}

// curlThroughRig runs curl with args and the URL http://<listener>/x,
// the listener a loopback one whose one connection, curl's, r serves
// with upEnd as its upstream connection to httpDest; served, if not nil,
// is called once r has it. It returns curl's error once curl has exited
// and the session has ended.
func curlThroughRig(t *testing.T, r *rig, upEnd net.Conn, curl string, stdout, stderr io.Writer, served func(), args ...string) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, append(args, "http://"+ln.Addr().String()+"/x")...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(waitLimit))
	c, err := ln.Accept()
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	sv := r.serve(c, c, upEnd, httpDest)
	if served != nil {
		served()
	}
	err = cmd.Wait()
	c.Close()
	sv.waitDoneOnce(t)
	return err
}

// hopAnswer carries connection-specific fields, as Apache sends
// Keep-Alive on every kept connection, and no Content-Type.
const hopAnswer = "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Hop\r\nKeep-Alive: timeout=5, max=100\r\n" +
	"Proxy-Connection: keep-alive\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok"

// TestHopByHopFieldsCurl: an HTTP/1 origin's connection-specific response
// fields (Connection, the X-Hop it names, Keep-Alive, Proxy-Connection)
// reach neither an HTTP/1.1 client nor an HTTP/2 one (h2c with prior
// knowledge), and nothing adds a Content-Type the origin did not send.
// To an HTTP/2 client they went out as header fields, which makes the
// response malformed (RFC 9113 §8.2.2): curl (nghttp2) reset the stream
// and failed; an HTTP/1.1 client was told the origin's keep-alive terms
// as the appliance's. The end-to-end X-End arrives.
func TestHopByHopFieldsCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	for _, tc := range curlProtocols {
		t.Run(tc.name, func(t *testing.T) {
			status, fields := curlCanned(t, curl, hopAnswer, tc.flag)
			if !strings.Contains(status, " 200") {
				t.Fatalf("got %q: want 200", status)
			}
			for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "X-Hop", "Content-Type"} {
				if v, ok := fields[k]; ok {
					t.Errorf("%s: %q reached the client", k, v)
				}
			}
		})
	}
}

// curlProtocols are the client protocols curl speaks to the appliance:
// HTTP/1.1, and h2c with prior knowledge.
var curlProtocols = []struct{ name, flag string }{{"HTTP/1.1", "--http1.1"}, {"h2c", "--http2-prior-knowledge"}}

// curlCanned has curl, speaking the protocol flag says, fetch through a
// rig from an origin that answers with answer, whose body is "ok" and
// whose last field is "X-End: 2". It returns the status line and fields
// curl printed, once curl succeeded and the body and X-End came whole.
func curlCanned(t *testing.T, curl, answer, flag string) (string, textproto.MIMEHeader) {
	t.Helper()
	r := newRig(t, testPolicy)
	origin := startCannedOrigin(t, answer)
	upEnd, err := net.Dial("tcp", origin.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	bodyFile := filepath.Join(t.TempDir(), "body")
	var head, errOut bytes.Buffer
	err = curlThroughRig(t, r, upEnd, curl, &head, &errOut, nil,
		"-sS", flag, "-H", "Host: www.example.test", "-D", "-", "-o", bodyFile)
	if err != nil {
		t.Fatalf("curl: %v (%s)", err, strings.TrimSpace(errOut.String()))
	}
	// The status line, then the fields, as curl printed them.
	tp := textproto.NewReader(bufio.NewReader(&head))
	status, _ := tp.ReadLine()
	fields, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("curl's head %q: %v", head.String(), err)
	}
	body, _ := os.ReadFile(bodyFile)
	if string(body) != "ok" || fields.Get("X-End") != "2" {
		t.Fatalf("got %q, X-End %q, body %q: want X-End 2, ok", status, fields.Get("X-End"), body)
	}
	return status, fields
}

// TestHopByHopFieldsUnnamedCurl: connection-specific response fields an
// origin sends without naming them in Connection (Keep-Alive, TE), and an
// Upgrade offer on a status other than 101, reach neither an HTTP/1.1
// client nor an h2c one. To curl over h2c each made the response
// malformed (PROTOCOL_ERROR, the stream reset); an HTTP/1.1 client was
// told the origin's connection terms. hopAnswer names Keep-Alive in
// Connection, so it never held the list entry itself. Holds hopByHop's
// entries (mutants R12, Keep-Alive dropped; R14, Te dropped) and the
// Upgrade removal on a non-101 (R17).
func TestHopByHopFieldsUnnamedCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	for _, a := range []struct{ name, answer, field string }{
		{"keepalive", "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok", "Keep-Alive"},
		{"te", "HTTP/1.1 200 OK\r\nTE: gzip\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok", "Te"},
		{"upgrade", "HTTP/1.1 426 Upgrade Required\r\nUpgrade: h2c\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok", "Upgrade"},
	} {
		for _, tc := range curlProtocols {
			t.Run(a.name+"/"+tc.name, func(t *testing.T) {
				_, fields := curlCanned(t, curl, a.answer, tc.flag)
				if v, ok := fields[a.field]; ok {
					t.Errorf("%s: %q reached the client", a.field, v)
				}
			})
		}
	}
}

// TestOriginCloseEndsH1Client: with the Connection field no longer
// relayed, an HTTP/1 origin's "Connection: close" still ends an HTTP/1
// client's connection after the response (resp.Close, which goproxy
// writes as "Connection: close").
func TestOriginCloseEndsH1Client(t *testing.T) {
	r := newRig(t, testPolicy)
	origin := startCannedOrigin(t, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
	upEnd, err := net.Dial("tcp", origin.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, sv := r.connectTCP(upEnd, httpDest)
	hc := newHTTPClient(t, c)
	resp, body := hc.do("GET /x HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	if resp.StatusCode != http.StatusOK || body != "ok" || !resp.Close {
		t.Fatalf("%d %q, close %v: want 200 ok, and the connection closed", resp.StatusCode, body, resp.Close)
	}
	hc.wantClosed()
	sv.waitDoneOnce(t)
}
