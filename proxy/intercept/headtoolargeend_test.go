package intercept_test

import (
	"fmt"
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

// TestH1HeadLimitWords: an HTTP/1 431's deny record names the limit the
// head was held to, as it was measured, over loopback TCP: a head that
// measures just that passes, one a byte more is refused. The words said
// "larger than 2048 bytes", --max-header-bytes, of a limit of 2688: each
// line is charged 64 beside its bytes, with room for ten lines' charge
// (h1LineCharge), as an HTTP/2 header list's words name the limit it is
// held to, --max-header-bytes plus 320.
func TestH1HeadLimitWords(t *testing.T) {
	const limit = 2048
	const held = limit + 10*64
	// A head of four lines (the request line, Host, X-Pad and the empty
	// line) that measures cost: its bytes, and 64 a line.
	head := func(cost int) string {
		pre := "GET /b HTTP/1.1\r\nHost: www.example.test\r\nX-Pad: "
		return pre + strings.Repeat("p", cost-4*64-len(pre)-4) + "\r\n\r\n"
	}
	for _, cost := range []int{held, held + 1} {
		r := newRig(t, testPolicy, func(c *intercept.Config) { c.MaxHeaderBytes = limit })
		upEnd, _ := r.startUpstream(nil)
		c, sv := r.connectTCP(upEnd, httpDest)
		c.SetDeadline(time.Now().Add(waitLimit))
		resp, body := newHTTPClient(t, c).do(head(cost))
		if cost == held {
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("a head that measures %d, the limit: %d %q, want it passed", cost, resp.StatusCode, body)
			}
			continue
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("a head that measures %d: %d %q, want 431", cost, resp.StatusCode, body)
		}
		sv.waitDoneOnce(t)
		deny := onlyRecord(t, r, "http")
		if want := fmt.Sprintf("request head larger than %d bytes (its bytes and 64 a line)", held); deny.Status != 431 ||
			deny.Action != "deny" || deny.Error != want {
			t.Errorf("deny record %d %s %q, want 431 deny %q", deny.Status, deny.Action, deny.Error, want)
		}
	}
}
