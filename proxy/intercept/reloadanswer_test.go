package intercept_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestReloadDeniesAnswerHeadWithoutBody: a response whose head the
// destination sent after a reload denied its name reached the client
// when no body read followed it (where the recheck ran): an HTTP/1 HEAD
// answer went out whole, recorded allow/ok under the old rule, and a
// WebSocket 101 opened a tunnel to the denied name. Now the answer is
// decided again once it has come, before its head goes: the client gets
// a 403 instead, and the record says the reload denied it.
func TestReloadDeniesAnswerHeadWithoutBody(t *testing.T) {
	for _, tc := range []struct{ name, request, answer string }{
		{"head", "HEAD /poll HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
			"HTTP/1.1 200 OK\r\nX-Secret: exfil-after-deny\r\nContent-Length: 100\r\n\r\n"},
		{"websocket", "GET /poll HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
			"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Secret: exfil-after-deny\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, holder := newReloadableRig(t)
			proxyEnd, originEnd := testnet.TCPPair(t)
			originEnd.SetDeadline(time.Now().Add(waitLimit))
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(c, tc.request)
			if _, err := http.ReadRequest(bufio.NewReader(originEnd)); err != nil {
				t.Fatal(err)
			}
			after := reloadTo(t, holder, tightenedPolicy)
			io.WriteString(originEnd, tc.answer)
			br := bufio.NewReader(c)
			sent, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.request)))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, sent) // no body to a HEAD

			if err != nil {
				t.Fatalf("the client got no answer: %v", err)
			}
			head, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Secret") != "" {
				t.Errorf("the client got %d %v %q, want a 403 and nothing of the denied name's answer", resp.StatusCode, resp.Header, head)
			}
			c.Close()
			originEnd.Close()
			sv.waitDoneOnce(t)
			rec := pathRecord(t, r, "/poll")
			if rec.Status != http.StatusForbidden || rec.Action != "deny" || rec.Rule != "no-www" || rec.Policy != after.ID() ||
				rec.Result != "denied" || !strings.Contains(rec.Error, "ended by a policy reload: denied by policy") {
				t.Errorf("record %+v; want status 403, action deny by rule no-www of the reload's policy %q, result denied, "+
					"error ended by a policy reload", rec, after.ID())
			}
		})
	}
}
