package intercept_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// unreadableCases are frames the header list limit cannot follow, each a
// connection error to the server too, and the GOAWAY code the client must
// get for them (RFC 9113 §6.10, §4.3); each is sent in one write after
// the requests under way.
var unreadableCases = []struct {
	name, code, why string
	frames          func(pc *probeClient, fr *http2.Framer, under uint32)
}{
	{"block-interrupted", "PROTOCOL_ERROR", "a header block interrupted by a frame of type 6",
		func(pc *probeClient, fr *http2.Framer, _ uint32) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: pc.next, BlockFragment: []byte{0x82}})
			fr.WritePing(false, [8]byte{})
		}},
	{"continuation-outside-a-block", "PROTOCOL_ERROR", "CONTINUATION outside a header block",
		func(_ *probeClient, fr *http2.Framer, under uint32) { fr.WriteContinuation(under, true, []byte{0x82}) }},
	{"bad-hpack-index", "COMPRESSION_ERROR", "a header block that cannot be decoded",
		func(pc *probeClient, fr *http2.Framer, _ uint32) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: pc.next, BlockFragment: []byte{0xff, 0x7f}, EndHeaders: true, EndStream: true})
		}},
	{
		// The client's RST_STREAM of the request under way interrupts
		// the block: the refusal comes first, and ends the request.
		"block-interrupted-by-a-reset", "PROTOCOL_ERROR", "a header block interrupted by a frame of type 3",
		func(pc *probeClient, fr *http2.Framer, under uint32) {
			pc.hb.Reset()
			pc.enc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: pc.next, BlockFragment: bytes.Clone(pc.hb.Bytes())})
			fr.WriteRSTStream(under, http2.ErrCodeCancel)
		},
	},
}

// sendUnreadable writes the case's frames in one write.
func sendUnreadable(pc *probeClient, frames func(pc *probeClient, fr *http2.Framer, under uint32), under uint32) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	frames(pc, fr, under)
	pc.c.Write(buf.Bytes())
}

// checkUnreadableRefusal checks what the client and the records got for
// the case: the GOAWAY, the refusal's deny record, and the want requests
// under way recorded as ended by the refusal.
func checkUnreadableRefusal(t *testing.T, pc *probeClient, r *rig, code, why string, want int) {
	t.Helper()
	if !waitFor(t, "the client's end", 2*waitLimit, pc.connEnded) {
		t.Fatal("the connection was not closed")
	}
	if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, code+" ") || !strings.Contains(g, why) {
		t.Errorf("the client got GOAWAY %q, want %s (%s)", g, code, why)
	}
	refused := "the appliance refused the connection (GOAWAY " + code + ": frames the appliance cannot read: " + why
	deny := "connection refused: HTTP/2 " + code + ": frames the appliance cannot read: " + why
	var denies []records.Record
	cut := 0
	waitFor(t, "the records", 2*waitLimit, func() bool { return len(ofKind(r.records(), "http")) >= want+1 })
	for _, rec := range ofKind(r.records(), "http") {
		switch {
		case rec.Action == "deny":
			denies = append(denies, rec)
		case strings.HasPrefix(rec.Path, "/hang/"):
			cut++
			if rec.Result != "error" || !strings.HasPrefix(rec.Error, refused) || !strings.Contains(rec.Error, ") before the response came") {
				t.Errorf("%s: result %q error %q, want error, %q… before the response came", rec.Path, rec.Result, rec.Error, refused)
			}
		}
	}
	if cut != want {
		t.Errorf("%d records of the requests under way, want %d", cut, want)
	}
	if len(denies) != 1 || denies[0].Status != 0 || !strings.HasPrefix(denies[0].Error, deny) {
		t.Errorf("deny records %+v, want one, no status, %q…", denies, deny)
	}
}

// TestH2UnreadableFramesRefused: frames the header list limit cannot
// follow (a header block interrupted, a CONTINUATION outside one, a block
// that cannot be decoded) ended the connection with no GOAWAY: the client
// was told nothing, the requests under way were recorded as the client's
// going away (`reset`, "the client went away before the response came"),
// and the tls record said `ok` (review rev33a F3). Now the client gets the
// GOAWAY the server would have sent (PROTOCOL_ERROR, COMPRESSION_ERROR),
// and the records say the appliance's refusal, as for a guard's.
func TestH2UnreadableFramesRefused(t *testing.T) {
	for _, tc := range unreadableCases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			pc, o := newProbeClient(t, r)
			h0 := pc.open("GET", "/hang/0", true)
			pc.open("GET", "/hang/1", true)
			if !waitFor(t, "the requests at the origin", 2*waitLimit, func() bool { return o.cur.Load() == 2 }) {
				t.Fatal("the requests never reached the origin")
			}
			sendUnreadable(pc, tc.frames, h0)
			checkUnreadableRefusal(t, pc, r, tc.code, tc.why, 2)
			tlsRec := onlyRecord(t, r, "tls")
			refused := "the appliance refused the connection (GOAWAY " + tc.code + ": frames the appliance cannot read: " + tc.why
			if tlsRec.Result != "error" || !strings.HasPrefix(tlsRec.Error, refused) || strings.Contains(tlsRec.Error, " before the response") {
				t.Errorf("tls record result %q error %q, want error, %q…", tlsRec.Result, tlsRec.Error, refused)
			}
		})
	}
}

// TestH2CUnreadableFramesRefused: the same over cleartext HTTP/2 (h2c),
// which the same limit reads.
func TestH2CUnreadableFramesRefused(t *testing.T) {
	for _, tc := range unreadableCases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, originEnd := testnet.TCPPair(t)
			o := startKeptOrigin(t, originEnd, "", "")
			c, _ := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(2 * waitLimit))
			pc := newProbeClientOn(t, c, "http")
			id := pc.open("POST", "/hang/1", false)
			pc.data(id, []byte("hello"), false)
			if !waitFor(t, "the origin's request", waitLimit, func() bool { return o.has("hello") }) {
				t.Fatal("the request never reached the origin")
			}
			sendUnreadable(pc, tc.frames, id)
			checkUnreadableRefusal(t, pc, r, tc.code, tc.why, 1)
		})
	}
}
