package intercept_test

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// madeYouReset writes, for each stream of ids, a GET of path with
// END_STREAM, and after all of them the frame that has x/net reset each
// stream (how: "window0", a WINDOW_UPDATE of 0; "dataAfterEnd", DATA
// after END_STREAM; "selfPriority", a PRIORITY on which the stream
// depends on itself; "overLength", a POST of content-length 1 without
// END_STREAM, then DATA of 2 bytes; "badTrailer", a POST without
// END_STREAM, then a trailer block with END_STREAM and a pseudo-header
// field).
func madeYouReset(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, how, path string, ids []uint32) {
	for _, id := range ids {
		hb.Reset()
		fields := [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", "www.example.test"}}
		switch how {
		case "overLength":
			fields = append(fields, [2]string{"content-length", "1"})
			fields[0][1] = "POST"
		case "badTrailer":
			fields[0][1] = "POST"
		}
		for _, f := range fields {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: how != "overLength" && how != "badTrailer"})
	}
	for _, id := range ids {
		switch how {
		case "window0":
			fr.WriteWindowUpdate(id, 0)
		case "dataAfterEnd":
			fr.WriteData(id, false, []byte("x"))
		case "selfPriority":
			fr.WritePriority(id, http2.PriorityParam{StreamDep: id, Weight: 15})
		case "overLength":
			fr.WriteData(id, true, []byte("xx"))
		case "badTrailer":
			hb.Reset()
			enc.WriteField(hpack.HeaderField{Name: ":path", Value: "/x"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
		}
	}
}

// A MadeYouReset client that stops reading: its first stream asks for a
// large answer, with windows large enough that x/net writes it until the
// socket buffers are full, and then it reads nothing while it opens
// streams and has x/net reset each one. x/net's RST_STREAMs wait behind
// the blocked write, and x/net closes a stream only once its reset is
// written: counted as written, the resets stayed at 0, and the client had
// x/net's 250 handlers (249 records) with no GOAWAY and no refusal record
// (review r6s25 F1), and so still with DATA over the request's
// content-length and a bad trailer block (review r4s26 F2). Counted as
// the client's frame comes in, the connection is refused past
// h2MaxPrematureResets, with its record.
func TestH2RapidResetStalledReader(t *testing.T) {
	for _, how := range []string{"window0", "dataAfterEnd", "selfPriority", "overLength", "badTrailer"} {
		t.Run(how, func(t *testing.T) { h2StalledReader(t, how) })
	}
}

func h2StalledReader(t *testing.T, how string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	big := []byte(strings.Repeat("b", 4<<20))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Write(big)
			return
		}
		w.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	var dials atomic.Int64
	r := newRig(t, testPolicy, dialTo(addr, &dials))
	upEnd, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, proxySide := testnet.TCPPair(t)
	c.SetReadBuffer(4096)
	sv := r.serve(c, proxySide, upEnd, httpDest)

	var buf, hb bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	fr.WriteWindowUpdate(0, 1<<30)
	enc := hpack.NewEncoder(&hb)
	hb.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/big"}, {":authority", "www.example.test"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
	c.Write(buf.Bytes())
	time.Sleep(500 * time.Millisecond) // the big answer fills the buffers

	const streams = 1000
	id, sent := uint32(3), 0
	for sent < streams {
		buf.Reset()
		var ids []uint32
		for range 20 {
			ids = append(ids, id)
			id += 2
		}
		madeYouReset(fr, enc, &hb, how, "/", ids)
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(buf.Bytes()); err != nil {
			break // refused, and the connection closed
		}
		sent += len(ids)
		time.Sleep(5 * time.Millisecond)
	}
	// Reading again would not help: over loopback, with so small a
	// receive buffer, the appliance's blocked write waits for TCP's
	// persist timer, which backs off to seconds. The client closes.
	c.Close()
	sv.waitDoneOnce(t)
	recs := ofKind(r.records(), "http")
	n := 0
	for _, rec := range recs {
		if rec.Host == "www.example.test" && rec.Path == "/" {
			n++
		}
	}
	rec := refusedRecord(recs)
	t.Logf("%s: %d streams sent, %d records for /; refusal %v", how, sent, n, rec != nil)
	if rec == nil || !strings.Contains(rec.Error, "streams reset before their response") {
		t.Errorf("%s: a client that stopped reading had %d streams reset by the server: no refusal record (%+v)", how, sent, rec)
	}
	if n > 2*h2MaxPrematureResets {
		t.Errorf("%s: %d records for the reset streams, want at most %d", how, n, 2*h2MaxPrematureResets)
	}
}

// A MadeYouReset client that reads, and opens no stream after those the
// server reset: its resets were checked only at its next stream, and it
// kept its connection, with no GOAWAY nor refusal record. Its streams go
// in batches of 20, each batch's HEADERS before the frames that draw the
// resets, 120 streams in all (each batch's resets read before the next),
// so that no HEADERS comes once the resets are past h2MaxPrematureResets.
// The resets counted as the client's frames come in (window0,
// dataAfterEnd) are checked there; those counted as x/net writes them (a
// DATA over the request's content-length, overLength) are checked on the
// writer, which writes the GOAWAY between two of x/net's frames.
func TestH2RapidResetNoFurtherStream(t *testing.T) {
	for _, how := range []string{"window0", "dataAfterEnd", "overLength"} {
		t.Run(how, func(t *testing.T) {
			r, c, sv, frames, _, _ := h2cOriginRig(t)
			c.Write(h2cStart().Bytes())
			var buf, hb bytes.Buffer
			fr := http2.NewFramer(&buf, nil)
			fr.AllowIllegalWrites = true
			enc := hpack.NewEncoder(&hb)
			id := uint32(1)
			var g h2Ev
			refused := false
			for batch := 0; batch < 6 && !refused; batch++ {
				buf.Reset()
				var ids []uint32
				for range 20 {
					ids = append(ids, id)
					id += 2
				}
				madeYouReset(fr, enc, &hb, how, "/", ids)
				c.Write(buf.Bytes())
				for got := 0; got < len(ids) && !refused; {
					f, ok := nextFrame(t, frames, func(f h2Ev) bool { return f.typ == http2.FrameRSTStream || isGoAway(f) })
					switch {
					case !ok:
						t.Fatalf("batch %d: %d resets of %d, then nothing", batch, got, len(ids))
					case isGoAway(f):
						g, refused = f, true
					default:
						got++
					}
				}
			}
			if !refused {
				g, refused = nextFrame(t, frames, isGoAway)
			}
			if !refused || g.code != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("%s: %d streams reset by the server, then no more: no GOAWAY(ENHANCE_YOUR_CALM) (%+v)", how, id/2, g)
			} else if g.last < id-2-40 || g.last > id-2 {
				// The last batch's streams, if the server was handed them.
				t.Errorf("%s: GOAWAY's last stream %d, want %d to %d", how, g.last, id-2-40, id-2)
			}
			// The appliance ends the connection, the client sending nothing.
			start := time.Now()
			if f, ok := nextFrame(t, frames, func(h2Ev) bool { return true }); ok {
				t.Errorf("%s: a frame after the GOAWAY: %+v", how, f)
			} else if d := time.Since(start); d > 3*time.Second {
				t.Errorf("%s: the connection ended %v after the GOAWAY", how, d)
			}
			c.Close()
			sv.waitDoneOnce(t)
			if rec := refusedRecord(r.records()); rec == nil || !strings.Contains(rec.Error, "by the server") {
				t.Errorf("%s: no refusal record: %+v", how, rec)
			}
		})
	}
}

const h2MaxPrematureResets = 100
