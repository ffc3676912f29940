package intercept_test

import (
	"bytes"
	"testing"

	"golang.org/x/net/http2"
)

// TestH2GuardGoAwayNamesLastStreamServed: a client whose read brings a new
// request (stream 3) and, behind it, a frame over the advertised size gets
// GOAWAY(FRAME_SIZE_ERROR) naming stream 1, the last one the server was
// handed: the refused read never reached it, so stream 3 was not
// processed. A GOAWAY naming 3 would tell the client that request may
// have been acted on, and a client retries only the streams above the
// GOAWAY's last one (RFC 9113 §6.8): the request would be lost, not
// retried. The refusal is counted among the denials (Interceptor.Denied),
// as its deny record says.
func TestH2GuardGoAwayNamesLastStreamServed(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, up := r.startUpstream(nil)
	c, sv := r.connectTCP(upEnd, httpDest)
	frames := h2cFrames(c)
	c.Write(h2cStart().Bytes())
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2cBlock("GET", 10), EndHeaders: true, EndStream: true})
	c.Write(out.Bytes())
	if f, _ := nextFrame(t, frames, func(f h2Ev) bool {
		return f.typ == http2.FrameHeaders && f.stream == 1 || isGoAway(f)
	}); f.status != "200" {
		t.Fatalf("stream 1 got %+v, want a 200", f)
	}

	// In one write: stream 3's request, then a frame one byte too large.
	out.Reset()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: h2cBlock("GET", 10), EndHeaders: true, EndStream: true})
	fr.WriteRawFrame(0xfe, 0, 0, make([]byte, 16385))
	c.Write(out.Bytes())
	g, ok := nextFrame(t, frames, isGoAway)
	if !ok || g.code != http2.ErrCodeFrameSize {
		t.Fatalf("after stream 3 and a 16385-byte frame: GOAWAY %+v (%v), want FRAME_SIZE_ERROR", g, ok)
	}
	if g.last != 1 {
		t.Errorf("GOAWAY names stream %d as the last processed, want 1 (stream 3 came in the refused read)", g.last)
	}
	if n := len(up.requests()); n != 1 {
		t.Errorf("the origin served %d requests, want 1: %q", n, up.requests())
	}
	sv.waitDoneOnce(t)
	if rec := refusedRecord(r.records()); rec == nil {
		t.Errorf("no deny record for the refused connection: %+v", ofKind(r.records(), "http"))
	}
	if n := r.ic.Denied(); n != 1 {
		t.Errorf("%d denials counted, want 1: the refused connection", n)
	}
}
