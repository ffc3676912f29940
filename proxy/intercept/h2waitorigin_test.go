package intercept_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestH2OriginStreamsHeldBounded: a bumped HTTP/2 client that ignores the
// 100 concurrent streams the appliance advertises opens 250 at once
// towards an HTTP/2 origin of its own that takes every stream and answers
// none. All of them have a connection at once (one connection carries
// them all), so a bound on the wait for a connection alone let the
// origin hold 250, each with its handler, request and header list (35 MB
// of tiny fields in the review's probe), for as long as it liked. Those
// past 100 without a response head are answered 503 at once, and the
// origin holds no more than 100.
func TestH2OriginStreamsHeldBounded(t *testing.T) {
	const streams, allowed = 250, 100
	r := newRig(t, testPolicy)
	upEnd, originEnd := testnet.TCPPair(t)
	var atOrigin atomic.Int64
	silentH2Origin(r, originEnd, &atOrigin)
	rd := openH2Streams(t, r, upEnd, &atOrigin, streams)
	for answered := 0; answered < streams-allowed; {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("%d streams answered, want %d (all but the %d the origin may hold): %v", answered, streams-allowed, allowed, err)
		}
		if f, ok := f.(*http2.MetaHeadersFrame); ok {
			if st := f.PseudoValue("status"); st != "503" {
				t.Fatalf("stream %d answered %s, want 503", f.StreamID, st)
			}
			answered++
		}
	}
	if held := atOrigin.Load(); held > allowed {
		t.Errorf("the origin holds %d streams, more than the %d allowed", held, allowed)
	}
	var refused int
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Status == http.StatusServiceUnavailable && rec.Result == "error" {
			refused++
		}
	}
	if refused != streams-allowed {
		t.Errorf("%d refusals recorded, want %d", refused, streams-allowed)
	}
}

// silentH2Origin takes streams over TLS on c and answers none, counting
// its HEADERS frames in heads (serveH2Frames).
func silentH2Origin(r *rig, c net.Conn, heads *atomic.Int64) {
	tc := tls.Server(c, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	go func() {
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		serveH2Frames(tc, func(*http2.Framer, *http2.HeadersFrame) bool {
			heads.Add(1)
			return true
		})
	}()
}

// openH2Streams connects a bumped HTTP/2 client through r to the origin
// behind upEnd, opens its first stream alone until the origin has it
// (atOrigin), so that the others find the one upstream connection up
// (the rig has no second to give a request that would dial meanwhile),
// then opens streams 1 to n-1 at once. It returns a framer reading the
// appliance's answers.
func openH2Streams(t *testing.T, r *rig, upEnd net.Conn, atOrigin *atomic.Int64, n int) *http2.Framer {
	t.Helper()
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	t.Cleanup(func() { tlsc.Close() })
	tlsc.SetDeadline(time.Now().Add(3 * waitLimit))
	var buf, hb bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings()
	enc := hpack.NewEncoder(&hb)
	open := func(s int) { writeGet(fr, enc, &hb, uint32(2*s+1), "https") }
	open(0)
	tlsc.Write(buf.Bytes())
	buf.Reset()
	for end := time.Now().Add(waitLimit); atOrigin.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the origin never got the first stream")
		}
	}
	for s := 1; s < n; s++ {
		open(s)
	}
	go tlsc.Write(buf.Bytes())
	rd := http2.NewFramer(io.Discard, tlsc)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	return rd
}
