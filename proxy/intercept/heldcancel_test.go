package intercept_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHeldStreamsGivenUpFreeTheirSlots: an h2c client's 8 streams get
// responses framed with both Content-Length and Transfer-Encoding (held:
// their connections count against the session's 8 until they close),
// whose origin then sends nothing more (a long poll). The client gives up
// on all 8 (it resets each stream). A held response's request context had
// been cancelled to keep net/http from pooling its connection, so nothing
// watched the client's: goproxy kept reading, the slots stayed held, and a
// 9th stream waited for ever. The client's end now closes the connection,
// as it does a well-framed one's, and the 9th stream gets its head.
func TestHeldStreamsGivenUpFreeTheirSlots(t *testing.T) {
	for _, faulty := range []bool{false, true} {
		t.Run(map[bool]string{false: "wellframed", true: "faulty"}[faulty], func(t *testing.T) {
			var open atomic.Int64
			var origin sync.WaitGroup
			stop := make(chan struct{})
			ln := startHeldOrigin(t, &origin, func(c net.Conn) {
				open.Add(1)
				defer open.Add(-1)
				c.SetDeadline(time.Now().Add(40 * time.Second))
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, heldHead(faulty))
				// A long poll: nothing more until the test ends, or
				// the appliance closes the connection.
				go func() { io.Copy(io.Discard, br); c.Close() }()
				select {
				case <-stop:
				case <-time.After(40 * time.Second):
				}
			})
			defer ln.Close()
			defer origin.Wait()
			defer close(stop)
			cc := h2cToOrigin(t, ln, 40*time.Second)
			defer cc.Close()
			get := func(ctx context.Context) (*http.Response, error) {
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://www.example.test/poll", nil)
				return cc.RoundTrip(req)
			}
			var cancels []context.CancelFunc
			for i := range 8 {
				ctx, cancel := context.WithCancel(context.Background())
				cancels = append(cancels, cancel)
				resp, err := get(ctx)
				if err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
				b := make([]byte, 5)
				io.ReadFull(resp.Body, b)
			}
			t.Logf("8 polls under way, origin connections open: %d", open.Load())
			for _, cancel := range cancels {
				cancel() // the client gives up on each poll: RST_STREAM
			}
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer cancel()
			start := time.Now()
			resp, err := get(ctx)
			if err != nil {
				t.Errorf("a new stream after the 8 were given up: %v (after %v); origin connections open %d", err, time.Since(start).Round(time.Millisecond), open.Load())
				return
			}
			resp.Body.Close()
			t.Logf("a new stream got its head after %v", time.Since(start).Round(time.Millisecond))
		})
	}
}
