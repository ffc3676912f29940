package intercept_test

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// h2Ev is what a test keeps of a frame the server wrote: a frame is
// valid only until the next is read.
type h2Ev struct {
	typ      http2.FrameType
	stream   uint32
	status   string // a response head's
	settings map[http2.SettingID]uint32
	code     http2.ErrCode // a GOAWAY's or RST_STREAM's
	last     uint32        // a GOAWAY's last stream
}

// h2cFrames reads the server's frames on c until it ends, and sends each
// on the channel returned, closed at the end.
func h2cFrames(c net.Conn) <-chan h2Ev {
	ch := make(chan h2Ev, 1<<16)
	go func() {
		defer close(ch)
		fr := http2.NewFramer(nil, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			ev := h2Ev{typ: f.Header().Type, stream: f.Header().StreamID}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					ev.settings = map[http2.SettingID]uint32{}
					f.ForeachSetting(func(s http2.Setting) error { ev.settings[s.ID] = s.Val; return nil })
				}
			case *http2.MetaHeadersFrame:
				ev.status = f.PseudoValue("status")
			case *http2.GoAwayFrame:
				ev.code, ev.last = f.ErrCode, f.LastStreamID
			case *http2.RSTStreamFrame:
				ev.code = f.ErrCode
			}
			ch <- ev
		}
	}()
	return ch
}

// nextFrame returns the next frame of ch that ok accepts; ok false if ch
// ends (or waitLimit passes) first.
func nextFrame(t *testing.T, ch <-chan h2Ev, ok func(h2Ev) bool) (h2Ev, bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case f, open := <-ch:
			if !open {
				return h2Ev{}, false
			}
			if ok(f) {
				return f, true
			}
		case <-deadline:
			return h2Ev{}, false
		}
	}
}

func isGoAway(f h2Ev) bool { return f.typ == http2.FrameGoAway }

// refusedRecord returns the http deny record of a connection a guard
// refused, if there is one.
func refusedRecord(recs []records.Record) *records.Record {
	for _, rec := range ofKind(recs, "http") {
		if rec.Action == "deny" && strings.HasPrefix(rec.Error, "connection refused: ") {
			return &rec
		}
	}
	return nil
}

// An HTTP/2 client is told the largest frame it may send is 16 KiB, not
// the 1 MiB goproxy's server advertises (whose frame reader then keeps a
// buffer the size of the largest frame read, for the connection's life):
// a frame of 16 KiB passes, one byte more gets GOAWAY(FRAME_SIZE_ERROR), a
// deny record, and the connection closed.
func TestH2MaxFrameSize(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, _ := r.startUpstream(nil)
	c, sv := r.connectTCP(upEnd, httpDest)
	frames := h2cFrames(c)
	c.Write(h2cStart().Bytes())

	f, ok := nextFrame(t, frames, func(f h2Ev) bool { return f.settings != nil })
	if !ok {
		t.Fatal("no SETTINGS from the server")
	}
	if v, ok := f.settings[http2.SettingMaxFrameSize]; !ok || v != 16384 {
		t.Fatalf("the server's SETTINGS_MAX_FRAME_SIZE is %d (set: %v), want 16384", v, ok)
	}

	// A frame of the largest size advertised, of a type the server
	// ignores, then a request: answered.
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	fr.WriteRawFrame(0xfe, 0, 0, make([]byte, 16384))
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2cBlock("GET", 10), EndHeaders: true, EndStream: true})
	c.Write(out.Bytes())
	if f, _ := nextFrame(t, frames, func(f h2Ev) bool {
		return f.typ == http2.FrameHeaders && f.stream == 1 || isGoAway(f)
	}); f.status != "200" {
		t.Fatalf("after a 16384-byte frame the request got %+v, want a 200", f)
	}

	// One byte more.
	out.Reset()
	fr.WriteRawFrame(0xfe, 0, 0, make([]byte, 16385))
	c.Write(out.Bytes())
	if g, ok := nextFrame(t, frames, isGoAway); !ok || g.code != http2.ErrCodeFrameSize || g.last != 1 {
		t.Fatalf("after a 16385-byte frame: GOAWAY %+v (%v), want FRAME_SIZE_ERROR, last stream 1", g, ok)
	}
	if f, ok := nextFrame(t, frames, func(h2Ev) bool { return true }); ok {
		t.Fatalf("the server wrote on after its GOAWAY: %+v", f)
	}
	sv.waitDoneOnce(t)
	rec := refusedRecord(r.records())
	if rec == nil || !strings.Contains(rec.Error, "a frame of 16385 bytes") {
		t.Fatalf("no deny record for the refused connection: %+v", ofKind(r.records(), "http"))
	}
}
