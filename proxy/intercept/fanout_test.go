package intercept_test

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestH2FanOutBounded: an HTTP/2 client's concurrent streams towards an
// upstream that speaks HTTP/1 share a few upstream connections, however
// the client writes the name. Each stream
// dialled one before (200 streams, 200 connections to the destination,
// counted in no flow table): one client connection could flood a third
// party from the appliance's address.
func TestH2FanOutBounded(t *testing.T) {
	const streams = 40
	release := make(chan struct{})
	var conns, served atomic.Int64
	ln := serveOrigin(t, &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			served.Add(1)
			<-release
			io.WriteString(w, "ok")
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	})
	r, first := originRig(t, ln)
	c, _ := r.connect(first, httpDest)
	cc := h2cOver(t, c, waitLimit)
	var wg sync.WaitGroup
	codes := make(chan int, streams)
	for i := range streams {
		// The name in a different case each time: one destination still,
		// and one bound (the transport pools per URL host).
		host := []byte("www.example.test")
		for b := range host {
			if i>>(b%6)&1 == 1 && host[b] >= 'a' && host[b] <= 'z' {
				host[b] -= 'a' - 'A'
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- h2Get(cc, "http://"+string(host)+"/slow")
		}()
	}
	// The upstream holds every response: wait until no more requests come.
	deadline := time.Now().Add(waitLimit)
	for last := int64(-1); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n := served.Load()
		if n == last && n > 0 {
			break
		}
		last = n
	}
	held, n := served.Load(), conns.Load()
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusOK {
			t.Fatalf("a stream got %d", code)
		}
	}
	if n > 8 || held > 8 {
		t.Fatalf("%d concurrent streams made %d upstream connections (%d requests held at once), want at most 8", streams, n, held)
	}
	t.Logf("%d streams: %d upstream connections, %d requests at once", streams, n, held)
	cc.Close()
}
