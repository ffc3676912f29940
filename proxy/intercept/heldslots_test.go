package intercept_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestFaultyHeldConnsStayBounded: an h2c client's 40 streams to an
// HTTP/1 origin that answers each with a head and the first chunk of its
// body, and holds the rest. A response framed with both Transfer-Encoding
// and Content-Length had its request ended so net/http would not pool its
// connection, which made net/http count it no more while its body still
// held it open: each stream got an upstream connection of its own (40
// open, the bound 8). Now at most 8 are open (the first, dialled before
// the session, among them) and the other streams wait; once the origin
// ends the bodies, every stream gets its response. The honest origin's
// streams (well framed) are bounded and served the same.
func TestFaultyHeldConnsStayBounded(t *testing.T) {
	const streams, bound = 40, 8
	for _, faulty := range []bool{false, true} {
		t.Run(map[bool]string{false: "wellframed", true: "faulty"}[faulty], func(t *testing.T) {
			release := make(chan struct{})
			var open, peak atomic.Int64
			var origin sync.WaitGroup
			ln := startHeldOrigin(t, &origin, func(c net.Conn) {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				n := open.Add(1)
				defer open.Add(-1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				br := bufio.NewReader(c)
				for { // keep-alive: one response after another
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					if _, err := io.WriteString(c, heldHead(faulty)); err != nil {
						return
					}
					select {
					case <-release:
					case <-time.After(30 * time.Second):
						return
					}
					if _, err := io.WriteString(c, "0\r\n\r\n"); err != nil {
						return
					}
				}
			})
			defer ln.Close()
			defer origin.Wait()
			cc := h2cToOrigin(t, ln, 30*time.Second)
			defer cc.Close()
			var wg sync.WaitGroup
			var heads atomic.Int64
			errs := make(chan error, streams)
			for range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					req, _ := http.NewRequestWithContext(ctx, "GET", "http://www.example.test/x", nil)
					resp, err := cc.RoundTrip(req)
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					heads.Add(1)
					b, err := io.ReadAll(resp.Body)
					if resp.StatusCode != http.StatusOK || string(b) != "hello" || err != nil {
						errs <- fmt.Errorf("got %d %q (%v), want 200 \"hello\"", resp.StatusCode, b, err)
					}
				}()
			}
			// The bound's worth of responses come, and are held.
			for deadline := time.Now().Add(waitLimit); heads.Load() < bound && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(2 * time.Second) // time for more dials (16 at once, 16 a second), if any were let through
			t.Logf("held: response heads %d, origin connections open %d, peak %d (bound %d)", heads.Load(), open.Load(), peak.Load(), bound)
			if p := peak.Load(); p > bound {
				t.Errorf("the origin had %d connections open at once, want at most %d", p, bound)
			}
			if h := heads.Load(); h != bound {
				t.Errorf("%d response heads while %d bodies were held, want %d (the other streams waiting)", h, bound, bound)
			}
			close(release)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("stream: %v", err)
			}
			if h := heads.Load(); h != streams {
				t.Errorf("%d of %d streams got their response", h, streams)
			}
		})
	}
}

// startHeldOrigin is the loopback HTTP/1 origin of the held-connection
// tests: each connection it accepts is counted in origin (before its
// goroutine starts, so that origin.Wait sees it), served by serve in a
// goroutine of its own, and closed when serve returns. The caller closes
// the listener.
func startHeldOrigin(t *testing.T, origin *sync.WaitGroup, serve func(c net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			origin.Add(1)
			go func() {
				defer origin.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln
}

// heldHead is the head and first chunk of a chunked response whose rest
// the origin holds back; when faulty, it is framed with a Content-Length
// as well.
func heldHead(faulty bool) string {
	if faulty {
		return "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
	}
	return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
}

// h2cToOrigin returns an h2c client connection through a rig whose every
// upstream dial, the first included, reaches ln; it lasts until timeout.
// The caller closes it (before waiting for the origin's handlers, which
// its connections keep).
func h2cToOrigin(t *testing.T, ln net.Listener, timeout time.Duration) *http2.ClientConn {
	t.Helper()
	r, upEnd := originRig(t, ln)
	c, _ := r.connectTCP(upEnd, httpDest)
	return h2cOver(t, c, timeout)
}

// originRig returns a rig whose every upstream dial reaches ln, and a
// first upstream connection to ln, for the session's own.
func originRig(t *testing.T, ln net.Listener) (*rig, net.Conn) {
	t.Helper()
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
	}
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Dial = dial })
	upEnd, err := dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return r, upEnd
}

// h2cOver starts an h2c client (HTTP/2 with prior knowledge) on the
// client's end c of a session, its deadline timeout from now.
func h2cOver(t *testing.T, c net.Conn, timeout time.Duration) *http2.ClientConn {
	t.Helper()
	c.SetDeadline(time.Now().Add(timeout))
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	return cc
}
