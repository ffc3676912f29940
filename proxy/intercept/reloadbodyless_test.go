package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestReloadAfterBodylessResponseHeadKeepsConnection: a response without a
// body (204, 304, Content-Length 0, a HEAD's) whose one body read, its end,
// comes after a denying reload: the client had the whole response from its
// head, decided before the reload, so the connection stays, the response
// is recorded ok, and the next request meets the reload (a 403). 0ccc3ef
// decided that read like bytes: the connection was reset after the whole
// 204 and the record said denied (review r10s28 F1).
func TestReloadAfterBodylessResponseHeadKeepsConnection(t *testing.T) {
	type variant struct {
		name, method, resp string
	}
	for _, v := range []variant{
		{"204", "GET", "HTTP/1.1 204 No Content\r\n\r\n"},
		{"cl0", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"head", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"},
		{"304", "GET", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"},
	} {
		t.Run(v.name, func(t *testing.T) {
			var reads atomic.Int32
			atRead, reloaded := make(chan struct{}), make(chan struct{})
			var once sync.Once
			reload := func() { once.Do(func() { close(reloaded) }) }
			defer reload()
			defer intercept.OnBodyRead(func() {
				if reads.Add(1) == 1 {
					close(atRead)
					select {
					case <-reloaded:
					case <-time.After(waitLimit):
					}
				}
			})()
			r, holder := newReloadableRig(t)
			proxyEnd, originEnd := testnet.TCPPair(t)
			go func() {
				br := bufio.NewReader(originEnd)
				for i := 0; i < 3; i++ {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					io.WriteString(originEnd, v.resp)
				}
			}()
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			br := bufio.NewReader(c)
			fmt.Fprintf(c, "%s /before HTTP/1.1\r\nHost: www.example.test\r\n\r\n", v.method)
			bodyRead := false
			select {
			case <-atRead:
				bodyRead = true
			case <-time.After(2 * time.Second):
			}
			t.Logf("body read before the reload: %v", bodyRead)
			reloadTo(t, holder, tightenedPolicy)
			reload()
			resp, err := http.ReadResponse(br, &http.Request{Method: v.method})
			if err != nil {
				t.Fatalf("response to /before: %v", err)
			}
			io.ReadAll(resp.Body)
			t.Logf("client got /before: %d (whole response)", resp.StatusCode)
			fmt.Fprintf(c, "GET /after HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			resp2, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Errorf("the connection was ended after a whole bodyless response (keep-alive lost): %v", err)
			} else if resp2.StatusCode != http.StatusForbidden {
				t.Errorf("/after, the first request after the reload: %d, want 403", resp2.StatusCode)
			}
			c.Close()
			sv.waitDoneOnce(t)
			for _, rec := range ofKind(r.records(), "http") {
				t.Logf("record: path %s result %s action %s rule %s status %d bytes_in %d error %q", rec.Path, rec.Result, rec.Action, rec.Rule, rec.Status, rec.BytesIn, rec.Error)
				if rec.Path == "/before" && rec.Result != "ok" {
					t.Errorf("/before record says %s (%q) though the client got the whole %d", rec.Result, rec.Error, resp.StatusCode)
				}
			}
		})
	}
}
