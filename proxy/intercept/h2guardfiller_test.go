package intercept_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Rapid Reset with a filler: an h2c client that sends, beside each stream
// it resets at once, one the appliance does not serve (a HEADERS with no
// :path, which x/net resets itself with no handler and no record; or a
// request for a denied name, answered 403 with its record from the
// client's deny bucket) is sent GOAWAY(ENHANCE_YOUR_CALM) soon past 100
// resets. Counted against every stream opened, its resets stayed at
// exactly half: 2000 pairs made 2000 records of reset streams and no
// GOAWAY (review r1dos F1).
func TestH2RapidResetUnservedFillerRefused(t *testing.T) {
	for _, filler := range []string{"malformed", "denied"} {
		t.Run(filler, func(t *testing.T) { rapidResetWithFiller(t, filler) })
	}
}

func rapidResetWithFiller(t *testing.T, filler string) {
	r, c, sv, frames, dials, _ := h2cOriginRig(t)
	goaway := make(chan h2Ev, 1)
	go func() {
		if g, ok := nextFrame(t, frames, isGoAway); ok {
			goaway <- g
		}
		close(goaway)
	}()
	c.Write(h2cStart().Bytes())

	var hb, buf bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	fr := http2.NewFramer(&buf, nil)
	head := func(id uint32, fields ...string) {
		hb.Reset()
		for i := 0; i < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
	}
	const pairs = 2000
	id, sent := uint32(1), 0
	var g h2Ev
	refused := false
send:
	for sent < pairs {
		if filler == "malformed" {
			head(id, ":method", "GET")
		} else {
			head(id, ":method", "GET", ":scheme", "http", ":path", "/", ":authority", "evil.example.test")
		}
		head(id+2, ":method", "GET", ":scheme", "http", ":path", "/", ":authority", "www.example.test")
		fr.WriteRSTStream(id+2, http2.ErrCodeCancel)
		id += 4
		sent++
		if sent%20 == 0 || sent == pairs {
			if _, err := c.Write(buf.Bytes()); err != nil {
				break
			}
			buf.Reset()
			// Paced, as the review's probe was, below x/net's own bound
			// on the resets queued before their handlers start.
			select {
			case g, refused = <-goaway:
				break send
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if !refused {
		g, refused = <-goaway
	}
	if !refused || g.code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("%d pairs of a %s filler and a reset stream: GOAWAY %+v (%v), want ENHANCE_YOUR_CALM", sent, filler, g, refused)
		c.Close()
	}
	sv.waitDoneOnce(t)
	recs := ofKind(r.records(), "http")
	rec := refusedRecord(recs)
	if rec == nil || !strings.Contains(rec.Error, "streams reset before their response") {
		t.Errorf("no deny record for the refused connection: %+v", rec)
	}
	resetRecs := 0
	for _, rec := range recs {
		if rec.Host == "www.example.test" {
			resetRecs++
		}
	}
	t.Logf("%s filler: %d pairs sent, %d records of reset streams, %d dials; %v", filler, sent, resetRecs, dials.Load(), rec)
	if resetRecs > 250 {
		t.Errorf("%d records of reset streams for %d pairs: the limit did not hold", resetRecs, sent)
	}
}

// A real client that cancels many of its streams is never refused: Go's
// HTTP/2 client loads pages of 30 requests, and 5 for a denied name (a
// browser's blocked trackers, answered 403), and the user leaves each page
// with 12 of its requests still unanswered, 20 times: 240 streams reset
// before their response, more than h2MaxPrematureResets, and 100 streams
// the appliance answered itself, yet the resets stay under half the 600
// streams served. Every request not cancelled is answered, and the
// connection serves on.
func TestH2ClientCancellingManyStreamsNotRefused(t *testing.T) {
	addr, _, _ := loopbackOrigin(t, 50*time.Millisecond)
	var dials atomic.Int64
	r := newRig(t, testPolicy, dialTo(addr, &dials))
	upEnd, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, sv := r.connectTCP(upEnd, httpDest)
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	get := func(ctx context.Context, host string) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+host+"/", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, err = b.ReadFrom(resp.Body)
		return resp.StatusCode, err
	}
	const rounds, allowed, denied, cancelled = 20, 30, 5, 12
	var cancels atomic.Int64
	for round := range rounds {
		var wg sync.WaitGroup
		errs := make(chan string, allowed+denied)
		for i := range allowed + denied {
			host := "www.example.test"
			if i >= allowed {
				host = "evil.example.test"
			}
			ctx, cancel := context.WithCancel(context.Background())
			wg.Go(func() {
				defer cancel()
				code, err := get(ctx, host)
				switch {
				case i < cancelled:
					if err != nil {
						cancels.Add(1)
					}
				case i >= allowed && (err != nil || code != http.StatusForbidden):
					errs <- host + ": " + errOrStatus(err, code)
				case i < allowed && (err != nil || code != http.StatusOK):
					errs <- host + ": " + errOrStatus(err, code)
				}
			})
			if i < cancelled {
				// Left before its answer: the origin answers after 50 ms.
				time.AfterFunc(10*time.Millisecond, cancel)
			}
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatalf("page %d: %s", round, e)
		}
	}
	if !cc.CanTakeNewRequest() {
		t.Fatalf("the connection takes no new request after %d cancelled streams", cancels.Load())
	}
	if code, err := get(context.Background(), "www.example.test"); err != nil || code != http.StatusOK {
		t.Fatalf("after %d cancelled streams: %s", cancels.Load(), errOrStatus(err, code))
	}
	if cancels.Load() <= 100 {
		t.Fatalf("only %d requests cancelled before their answer: the test tests nothing", cancels.Load())
	}
	cc.Close()
	sv.waitDoneOnce(t)
	if rec := refusedRecord(r.records()); rec != nil {
		t.Fatalf("the connection was refused: %+v", rec)
	}
	t.Logf("%d requests cancelled before their answer, %d dials", cancels.Load(), dials.Load())
}

func errOrStatus(err error, code int) string {
	if err != nil {
		return err.Error()
	}
	return http.StatusText(code)
}
