package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// clEarlyAnswered opens a client (bumped or not) to o, sends head and
// the body's first bytes, and reads the early answer whole.
func clEarlyAnswered(t *testing.T, o *earlyOrigin, bumped bool, head string) (r *rig, c net.Conn, br *bufio.Reader, action string) {
	t.Helper()
	r, c, br, resp, action := earlyAnsweredTo(t, o, bumped, head+"abc")
	io.ReadAll(resp.Body)
	return r, c, br, action
}

// TestCLDrainTrickle: after the origin's early 413, the client trickles
// its Content-Length body (under 256 KiB left, so it is read), one byte
// every 200 ms. As for a chunked body (TestChunkDrainTrickle), the record
// must come within the drain's 2 s, noting the body not read, and the
// connection must close. Before, the rest of the declared length was read
// with no bound: the connection stayed open for good. Cleartext and
// bumped.
func TestCLDrainTrickle(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
		head := "POST /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 100003\r\n\r\n"
		r, c, br, action := clEarlyAnswered(t, o, bumped, head)
		defer trickle(c, "q")()
		awaitNotRead(t, r, action, http.StatusRequestEntityTooLarge, "not ended 2s after the response", 4*time.Second)
		expectClosed(t, c, br, time.Second)
	})
}

// TestCLDrainTooMuch: the client's declared body has far more than
// 256 KiB left after the origin's early answer. As net/http's server,
// the appliance reads none of it: the record comes at once, noting the
// body not read, and the connection closes after the answer. Before, it
// read all 8 MiB and then served the next request. Cleartext and bumped.
func TestCLDrainTooMuch(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		// Not stall: over net.Pipe the upstream TLS close's close_notify
		// would wait 5 s for an origin that reads nothing.
		o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
		const total = 8 << 20
		head := fmt.Sprintf("POST /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: %d\r\n\r\n", total+3)
		r, c, br, action := clEarlyAnswered(t, o, bumped, head)
		awaitNotRead(t, r, action, http.StatusRequestEntityTooLarge, "more than 256 KiB after the response", time.Second) // well within the drain's 2 s
		done := make(chan int, 1)
		go func() {
			buf := []byte(strings.Repeat("z", 64<<10))
			n := 0
			for n < total {
				k, err := c.Write(buf)
				n += k
				if err != nil {
					break
				}
			}
			done <- n
		}()
		expectClosed(t, c, br, 3*time.Second)
		c.Close() // ends the writer, whatever it managed
		if n := <-done; n >= total {
			t.Errorf("the appliance took all %d bytes of a body after the answer (net/http: at most 256 KiB, then close)", n)
		}
	})
}

// TestCLDrainSilentClient: with the idle and head bounds at 500 ms, a
// client whose huge Content-Length POST is answered (denied by policy on
// a later request, or an origin's 413) sends nothing more. Its
// connection must close within the drain's bound. Before, nothing armed
// a deadline while the appliance waited for that body: the connection was
// held for good. Cleartext and bumped.
func TestCLDrainSilentClient(t *testing.T) {
	defer intercept.SetClientIdleTimeout(500 * time.Millisecond)()
	defer intercept.SetRequestHeadTimeout(500 * time.Millisecond)()
	for _, tc := range []struct {
		name  string
		host  string
		first bool // an allowed GET first: the deny is a later request's
	}{
		{"deny-later-request", "evil.example.test", true},
		{"origin-413", "www.example.test", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cleartextAndBumped(t, func(t *testing.T, bumped bool) {
				o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
				r := newRig(t, testPolicy)
				c, _ := chunkClient(t, r, o, bumped)
				br := bufio.NewReader(c)
				if tc.first {
					io.WriteString(c, "GET /first HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("GET /first: %v", err)
					}
					io.ReadAll(resp.Body)
				}
				io.WriteString(c, "POST /a HTTP/1.1\r\nHost: "+tc.host+"\r\nContent-Length: 1000000000000\r\n\r\nabc")
				resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
				if err != nil {
					t.Fatalf("no answer: %v", err)
				}
				io.ReadAll(resp.Body)
				expectClosed(t, c, br, 3*time.Second)
			})
		})
	}
}

// TestCLDrainHalfCloseAfterEarly: the client half-closes in the middle
// of its Content-Length body after the origin's early 413. The record
// must say so, as for a chunked body: 413, ok, "the client stopped
// sending its request body after the whole response (unexpected EOF)".
// Before, it was written before the drain, with no note.
func TestCLDrainHalfCloseAfterEarly(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
		head := "POST /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 100000\r\n\r\n"
		r, c, br, _ := clEarlyAnswered(t, o, bumped, head)
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, c, br, 3*time.Second)
		rec := awaitRecord(t, r, "/a", time.Second)
		want := "the client stopped sending its request body after the whole response (unexpected EOF)"
		if rec == nil || rec.Status != http.StatusRequestEntityTooLarge || rec.Result != "ok" || rec.Error != want {
			t.Errorf("record %+v, want 413 ok %q", rec, want)
		}
	})
}
