package intercept_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// writeFrames has the probe client write what f frames in one write,
// illegal frames allowed.
func writeFrames(pc *probeClient, f func(fr *http2.Framer)) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	f(fr)
	_, _ = pc.c.Write(buf.Bytes())
}

// writeOversized frames a header list of about 70 KB opening stream id,
// in HEADERS and CONTINUATION frames of 16 KB; pc.mu is held.
func writeOversized(pc *probeClient, fr *http2.Framer, id uint32) {
	pc.hb.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: pc.scheme},
		{Name: ":authority", Value: pc.auth}, {Name: ":path", Value: "/big"},
		{Name: "cookie", Value: strings.Repeat("a", 70000), Sensitive: true}} {
		_ = pc.enc.WriteField(f)
	}
	blk := bytes.Clone(pc.hb.Bytes())
	for first := true; len(blk) > 0; first = false {
		k := min(len(blk), 16000)
		end := k == len(blk)
		if first {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk[:k], EndStream: true, EndHeaders: end})
		} else {
			_ = fr.WriteContinuation(id, end, blk[:k])
		}
		blk = blk[k:]
	}
}

// TestH2RefusalAfterServerGoAway: x/net's server has sent a GOAWAY of its
// own, for a connection error of the client's (a SETTINGS_ENABLE_PUSH of
// 2, which x/net finds past its framer, so that it reads on, and the
// header list limit does not foresee), or a graceful one (its answer to
// the client's own GOAWAY). Then the client sends what the appliance
// refuses: a stray CONTINUATION or a header block HPACK cannot decode
// (frames it cannot read), a PING of 20,000 bytes (the frame size guard),
// or a header list of 70 KB on a new stream (the list limit, whose
// refusal has a 431). After the error GOAWAY, x/net processes nothing
// more and closes the connection: the appliance writes and records no
// refusal, which sent a second GOAWAY, a 431 for a stream x/net ignored
// (past the GOAWAY's last stream), and a deny record saying the appliance
// refused the connection, where the tls record says the server's GOAWAY
// (review rev33f F1). After the graceful one, the refusal's GOAWAY named a
// higher last stream than it, which RFC 9113 §6.8 forbids, and its 431
// answered a stream x/net ignored (F2): the refusal is the GOAWAY alone,
// naming the graceful one's last stream.
func TestH2RefusalAfterServerGoAway(t *testing.T) {
	cases := []struct {
		name string
		then func(pc *probeClient, fr *http2.Framer)
	}{
		{"stray-continuation", func(pc *probeClient, fr *http2.Framer) { _ = fr.WriteContinuation(1, true, []byte{0x82}) }},
		{"bad-hpack", func(pc *probeClient, fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 101, BlockFragment: []byte{0xff, 0x7f}, EndHeaders: true, EndStream: true})
		}},
		{"big-ping", func(pc *probeClient, fr *http2.Framer) {
			_ = fr.WriteRawFrame(http2.FramePing, 0, 0, make([]byte, 20000))
		}},
		{"oversized-list", func(pc *probeClient, fr *http2.Framer) { writeOversized(pc, fr, pc.next); pc.next += 2 }},
	}
	firsts := []struct {
		name  string
		first func(fr *http2.Framer)
		code  http2.ErrCode // of x/net's GOAWAY
	}{
		{"server-error-goaway", func(fr *http2.Framer) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2})
		}, http2.ErrCodeProtocol},
		{"server-graceful-goaway", func(fr *http2.Framer) { _ = fr.WriteGoAway(0, http2.ErrCodeNo, nil) }, http2.ErrCodeNo},
	}
	for _, fc := range firsts {
		for _, tc := range cases {
			t.Run(fc.name+"/"+tc.name, func(t *testing.T) {
				r := newRig(t, testPolicy)
				pc, o := newProbeClient(t, r)
				pc.open("GET", "/hang/0", true)
				if !waitFor(t, "the request at the origin", 2*waitLimit, func() bool { return o.cur.Load() == 1 }) {
					t.Fatal("the request never reached the origin")
				}
				writeFrames(pc, fc.first)
				if !waitFor(t, "x/net's GOAWAY", waitLimit, func() bool { return len(pc.goAwaysGot()) > 0 }) {
					t.Fatal("no GOAWAY from x/net")
				}
				graceful := fc.code == http2.ErrCodeNo
				if graceful {
					pc.open("GET", "/past-the-goaway", true) // stream 3: x/net ignores it
				}
				writeFrames(pc, func(fr *http2.Framer) { tc.then(pc, fr) })
				if !waitFor(t, "the client's end", 2*waitLimit, pc.connEnded) {
					t.Fatal("the connection never ended")
				}
				if !waitFor(t, "the tls record", 2*waitLimit, func() bool { return len(ofKind(r.records(), "tls")) > 0 }) {
					t.Fatal("no tls record")
				}
				gs := pc.goAwaysGot()
				if len(gs) == 0 || gs[0].code != fc.code || gs[0].last != 1 {
					t.Fatalf("GOAWAYs %v, want x/net's %v with last 1 first", gs, fc.code)
				}
				for i := 1; i < len(gs); i++ {
					if gs[i].last > gs[i-1].last {
						t.Errorf("GOAWAYs %v: the last stream went up (RFC 9113 §6.8)", gs)
					}
				}
				for id := uint32(3); id < pc.next; id += 2 {
					if s := pc.status(id); s != "" {
						t.Errorf("stream %d, which x/net ignored, got %q", id, s)
					}
				}
				recs := r.records()
				denies := 0
				for _, rec := range recs {
					t.Logf("record %s %s %s %d %q %q", rec.Kind, rec.Action, rec.Path, rec.Status, rec.Result, rec.Error)
					if rec.Kind == "http" && rec.Action == "deny" {
						denies++
						if rec.Status != 0 {
							t.Errorf("deny record with status %d for an answer nobody got", rec.Status)
						}
					}
				}
				tlsRec := ofKind(recs, "tls")[0]
				if !graceful {
					if len(gs) != 1 {
						t.Errorf("GOAWAYs %v, want x/net's alone", gs)
					}
					if denies != 0 {
						t.Errorf("%d deny records, want none: the server's GOAWAY ended the connection", denies)
					}
					if !strings.Contains(tlsRec.Error, "GOAWAY PROTOCOL_ERROR") {
						t.Errorf("tls record %q %q, want the server's GOAWAY", tlsRec.Result, tlsRec.Error)
					}
					return
				}
				if len(gs) != 2 || gs[1].last != 1 || gs[1].code == http2.ErrCodeNo {
					t.Errorf("GOAWAYs %v, want the graceful one, then the refusal's with last 1", gs)
				}
				if denies != 1 {
					t.Errorf("%d deny records, want the refusal's", denies)
				}
				if tlsRec.Result != "error" || !strings.Contains(tlsRec.Error, "the appliance refused the connection") {
					t.Errorf("tls record %q %q, want the refusal", tlsRec.Result, tlsRec.Error)
				}
			})
		}
	}
}

// TestH2IdleCloseAfterGracefulGoAway: the appliance's idle close after
// x/net's graceful GOAWAY (drawn by the client's own GOAWAY) named the
// reader's last stream, raised by streams the client opened past x/net's
// GOAWAY, which x/net ignores: a second GOAWAY whose last stream went up
// (NO_ERROR last 0, then last 1, 4 of 4: review rev33g F3; RFC 9113 §6.8).
// A stream x/net refuses without a handler first spends the idle grace.
func TestH2IdleCloseAfterGracefulGoAway(t *testing.T) {
	defer intercept.SetClientIdleTimeout(300 * time.Millisecond)()
	r := newRig(t, testPolicy)
	pc, _ := newProbeClient(t, r)
	start := time.Now()
	pc.open("GET", "/bad", true, hpack.HeaderField{Name: ":foo", Value: "x"}) // stream 1: x/net resets it, no handler
	time.Sleep(time.Second - time.Since(start))                               // the idle close's grace after the connection's start
	writeFrames(pc, func(fr *http2.Framer) { _ = fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
	if !waitFor(t, "x/net's GOAWAY", waitLimit, func() bool { return len(pc.goAwaysGot()) > 0 }) {
		t.Fatal("no GOAWAY from x/net")
	}
	pc.open("GET", "/past", true)  // stream 3, past x/net's GOAWAY
	pc.open("GET", "/past2", true) // stream 5
	if !waitFor(t, "the client's end", 2*waitLimit, pc.connEnded) {
		t.Fatal("the connection never ended")
	}
	gs := pc.goAwaysGot()
	for i := 1; i < len(gs); i++ {
		if gs[i].last > gs[i-1].last {
			t.Errorf("GOAWAYs %v: the last stream went up", gs)
		}
	}
}
