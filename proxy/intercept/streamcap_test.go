package intercept_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestH2StreamsPastHeadBounded: a bumped HTTP/2 client that ignores the
// 100 concurrent streams the appliance advertises opens 150 towards an
// HTTP/2 origin of its own that answers each with a head and a first byte,
// then nothing (an event stream that stalls). Past their heads the
// streams wait on no bound of the wait for a head, and x/net's server
// takes 250: each held its handler, request and goproxy's 32 KiB copy
// buffer for as long as the origin liked. The 50 past the 100 in flight
// are answered 503 without reaching the origin, each recorded as refused
// by the bound.
func TestH2StreamsPastHeadBounded(t *testing.T) {
	const streams, allowed = 150, intercept.MaxStreamsInFlight
	r := newRig(t, testPolicy)
	upEnd, originEnd := testnet.TCPPair(t)
	var atOrigin atomic.Int64
	headFirstH2Origin(r, originEnd, &atOrigin)
	rd := openH2Streams(t, r, upEnd, &atOrigin, streams)
	codes := map[string]int{}
	for heads := 0; heads < streams; heads++ {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("%d of %d streams answered (%v): %v", heads, streams, codes, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			codes[f.PseudoValue("status")]++
		case *http2.RSTStreamFrame:
			t.Fatalf("stream %d reset (%v), want a 503", f.StreamID, f.ErrCode)
		default:
			heads-- // not an answer
		}
	}
	if codes["200"] != allowed || codes["503"] != streams-allowed {
		t.Errorf("streams answered %v, want %d 200 and %d 503", codes, allowed, streams-allowed)
	}
	if n := atOrigin.Load(); n != allowed {
		t.Errorf("the origin got %d streams, want %d", n, allowed)
	}
	var refused int
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Status != http.StatusServiceUnavailable {
			continue
		}
		refused++
		if rec.Result != "error" || !strings.Contains(rec.Error, "streams in flight") || rec.Host != "www.example.test" || rec.Action != "bump" {
			t.Errorf("a refusal recorded as %q %q (host %q, action %q)", rec.Result, rec.Error, rec.Host, rec.Action)
		}
	}
	if refused != streams-allowed {
		t.Errorf("%d refusals recorded, want %d", refused, streams-allowed)
	}
}

// TestH2HonestClientNeverRefused: a Go HTTP/2 client, which keeps to the
// concurrent streams the appliance advertises, has 130 requests to make at
// any time for many rounds, so that it keeps 100 streams open throughout,
// each past its head (the origin sends a head and a byte, then the rest a
// little later), opening a new stream the moment one ends; one request in
// seven it cancels after the first byte (a reset, and its slot reused at
// once). It is never refused: the bound counts a request from the start of
// RoundTrip until its record is written or its stream is closed, within
// the span the server counts the stream open.
func TestH2HonestClientNeverRefused(t *testing.T) {
	honestStreams(t, false)
}

// honestStreams is TestH2HonestClientNeverRefused; headLate, the origin
// sends each head late, with the body, and the client cancels about one
// request in three while it waits for its head, once the origin has it.
func honestStreams(t *testing.T, headLate bool) {
	const workers, rounds = 130, 8
	r := newRig(t, testPolicy)
	upEnd, originEnd := testnet.TCPPair(t)
	var cur, peak atomic.Int64
	var cancels sync.Map // path: the request's context.CancelFunc
	slowH2Origin(r, originEnd, &cur, &peak, headLate, func(path string) {
		if f, ok := cancels.Load(path); ok {
			f.(context.CancelFunc)()
		}
	})
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	defer tlsc.Close()
	tlsc.SetDeadline(time.Now().Add(6 * waitLimit))
	// Strict: a connection at its peer's limit queues the request, where
	// a pooling transport would open another connection.
	cc, err := (&http2.Transport{StrictMaxConcurrentStreams: true}).NewClientConn(tlsc)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var n atomic.Int64
	get := func() (int, error) {
		i := n.Add(1)
		cancel := i%7 == 0 || headLate && i%3 == 0
		path := fmt.Sprintf("/stream/%d", i)
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		if cancel && headLate {
			cancels.Store(path, stop)
			defer cancels.Delete(path)
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://www.example.test"+path, nil)
		resp, err := cc.RoundTrip(req)
		if cancel && headLate && errors.Is(err, context.Canceled) {
			return 0, nil // as asked
		}
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if cancel && !headLate { // the first byte, then a reset
			_, err = resp.Body.Read(make([]byte, 1))
		} else {
			_, err = io.Copy(io.Discard, resp.Body)
		}
		return resp.StatusCode, err
	}
	// The first request alone: the rest find the one upstream
	// connection up (the rig has no second).
	if code, err := get(); code != http.StatusOK || err != nil {
		t.Fatalf("the first request: %d, %v", code, err)
	}
	var (
		mu    sync.Mutex
		codes = map[int]int{}
		errs  []error
		wg    sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				code, err := get()
				mu.Lock()
				codes[code]++
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if codes[0]+codes[http.StatusOK] != workers*rounds || len(errs) > 0 {
		t.Errorf("%d requests answered %v (0: cancelled), errors %v; want all 200", workers*rounds, codes, errs[:min(len(errs), 3)])
	}
	t.Logf("%d requests (%d cancelled waiting), at most %d at the origin at once", workers*rounds, codes[0], peak.Load())
	if p := peak.Load(); p < intercept.MaxStreamsInFlight {
		t.Errorf("at most %d streams at the origin at once: the client never reached the bound, the test shows nothing", p)
	}
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Status == http.StatusServiceUnavailable {
			t.Fatalf("a 503 recorded: %q", rec.Error)
		}
	}
}

// slowH2Origin serves HTTP/2 over TLS on c: each response a head and a
// first byte at once (or, headLate, nothing yet), the rest after a little
// while, as a slow stream sends it; and until it has had 100 streams at
// once (or waitLimit), it holds the rest of each back, so that the streams
// in flight are 100 at least once. cur counts the streams it is serving,
// peak the most at once; arrived is told each stream's path as it comes.
func slowH2Origin(r *rig, c net.Conn, cur, peak *atomic.Int64, headLate bool, arrived func(path string)) {
	tc := tls.Server(c, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	full := make(chan struct{})
	var fullOnce sync.Once
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := cur.Add(1)
		defer cur.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		if n >= intercept.MaxStreamsInFlight {
			fullOnce.Do(func() { close(full) })
		}
		arrived(req.URL.Path)
		if !headLate {
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
		}
		select {
		case <-full:
		case <-req.Context().Done():
			return
		case <-time.After(waitLimit): // reported by the test's peak
		}
		// The slow stream's pace: what the test simulates, not a wait
		// for anything.
		select {
		case <-time.After(time.Duration(1+n%5) * time.Millisecond):
		case <-req.Context().Done():
			return
		}
		w.Write([]byte("y"))
	})
	go func() {
		if err := tc.Handshake(); err != nil { // ServeConn wants it done
			c.Close()
			return
		}
		(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
	}()
}

// TestH2HonestClientResetsWhileWaitingNeverRefused: as
// TestH2HonestClientNeverRefused, but the origin sends each head late and
// the client cancels about one request in three while it waits for it,
// opening the next stream at once: a stream the client has reset is no
// longer counted, though its round trip has yet to end. (The count of
// requests without a head, kept until their round trip ended, refused
// some in every run.)
func TestH2HonestClientResetsWhileWaitingNeverRefused(t *testing.T) {
	honestStreams(t, true)
}
