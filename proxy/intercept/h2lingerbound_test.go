package intercept_test

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2RefusalLingerBounded: after an HTTP/2 refusal (here a frame over
// the advertised size: GOAWAY) the appliance reads on, and discards, what
// the client still sends, so that closing does not reset the refusal away,
// but for h2Linger (2 s) at most: a client that keeps sending a byte more
// often than the quiet it waits for (200 ms) still has its connection
// closed. Unbounded, such a client held the connection, its goroutine and
// its flow for as long as it kept sending.
func TestH2RefusalLingerBounded(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, _ := r.startUpstream(nil)
	c, _ := r.connectTCP(upEnd, httpDest)
	frames := h2cFrames(c)
	c.Write(h2cStart().Bytes())
	var out bytes.Buffer
	http2.NewFramer(&out, nil).WriteRawFrame(0xfe, 0, 0, make([]byte, 16385))
	c.Write(out.Bytes())
	if g, ok := nextFrame(t, frames, isGoAway); !ok || g.code != http2.ErrCodeFrameSize {
		t.Fatalf("after a 16385-byte frame: GOAWAY %+v (%v), want FRAME_SIZE_ERROR", g, ok)
	}
	refused := time.Now()
	tick := time.NewTicker(50 * time.Millisecond) // well inside the 200 ms quiet
	defer tick.Stop()
	limit := time.After(6 * time.Second)
	for {
		select {
		case _, open := <-frames:
			if !open { // the appliance closed the connection
				if d := time.Since(refused); d > 4*time.Second {
					t.Errorf("the connection closed %v after the refusal, want within about 2 s", d)
				}
				return
			}
		case <-tick.C:
			c.Write([]byte{0}) // keeps sending: fails once the connection is gone
		case <-limit:
			t.Fatal("a client that keeps sending held its refused connection open 6 s after the refusal (h2Linger is 2 s)")
		}
	}
}
