package intercept_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH1HeadTooLargeEndsPromptly: an HTTP/1.1 head just over the limit
// (its whole rest in the read that broke it), from a client that keeps its
// connection open after the 431, over loopback TCP, cleartext and bumped.
// The connection ends at once after the 431, as net/http's server ends one
// after its 431, and the records say the 431 and nothing else: the bumped
// tls record stays ok. Before, net/textproto dropped the refused read's
// error (bufio's ReadLine returns a partial line without it), goproxy read
// on, and the read waited for the head deadline: the connection was held
// 10 s, and the bumped tls record said timeout, "request head not complete
// 10s after its first byte", of a head that was whole and refused.
func TestH1HeadTooLargeEndsPromptly(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		for _, over := range []int{1000, 4000} { // bytes of cookie over --max-header-bytes
			name := map[bool]string{false: "cleartext", true: "bumped"}[bumped]
			t.Run(name+"/"+map[int]string{1000: "1000", 4000: "4000"}[over], func(t *testing.T) {
				r := newRig(t, testPolicy)
				var c net.Conn
				var sv *served
				if bumped {
					upEnd, _ := r.startUpstream(r.upLeaf("www.example.test"), "http/1.1")
					var raw net.Conn
					raw, sv = r.connectTCP(upEnd, tlsDest)
					c = bumpClient(t, r, raw, "www.example.test", "http/1.1")
				} else {
					upEnd, _ := r.startUpstream(nil)
					c, sv = r.connectTCP(upEnd, httpDest)
				}
				head := "GET /big HTTP/1.1\r\nHost: www.example.test\r\nCookie: " +
					strings.Repeat("a", intercept.DefaultMaxHeaderBytes+over) + "\r\n\r\n"
				wrote := make(chan error, 1)
				go func() { _, err := io.WriteString(c, head); wrote <- err }()
				// The client reads to the end, and never closes: 2 s is the
				// linger's bound (drainWait), the head deadline 10 s.
				start := time.Now()
				c.SetReadDeadline(start.Add(2 * time.Second))
				got, err := io.ReadAll(c)
				if err != nil {
					t.Fatalf("the connection still open %v after the 431 (%v): %q", time.Since(start).Round(time.Millisecond), err, got)
				}
				if !strings.HasPrefix(string(got), "HTTP/1.1 431 ") {
					t.Fatalf("got %q, want a 431", got)
				}
				select {
				case <-wrote:
				case <-time.After(waitLimit):
					t.Fatal("the client's write still blocks")
				}
				sv.waitDoneOnce(t)
				deny := onlyRecord(t, r, "http")
				if deny.Status != http.StatusRequestHeaderFieldsTooLarge || deny.Action != "deny" || deny.Result != "denied" ||
					!strings.HasPrefix(deny.Error, "request head larger than ") {
					t.Errorf("deny record %+v", deny)
				}
				want := 1
				if bumped {
					want = 2
					if rec := onlyRecord(t, r, "tls"); rec.Result != "ok" || rec.Error != "" {
						t.Errorf("tls record %s %q, want ok: the 431 is the deny record's", rec.Result, rec.Error)
					}
				}
				if recs := r.records(); len(recs) != want {
					t.Errorf("records %+v, want %d", recs, want)
				}
			})
		}
	}
}
