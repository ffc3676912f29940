package intercept_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestH2RefusalRecorded: a client with requests under way at the origin
// (/hang: no answer; /live: its answer begun) is refused by the appliance, which writes its own
// GOAWAY and closes the connection. Those requests were recorded
// `reset`, "the client went away before the response came (context
// canceled)", and the bumped connection's tls record `ok`: the refusal's
// GOAWAY never reached the stream notes, the server's own GOAWAY does
// (review rev32a F2, its probes TestRev32aCalmRefusalRecords and
// TestRev32aFrameSizeRefusalRecords). Now each says the refusal, `error`,
// as for the server's own GOAWAY for a connection error, and so does the
// tls record; the one http deny record of the refusal stays as it was.
func TestH2RefusalRecorded(t *testing.T) {
	for _, tc := range []struct {
		name string
		hang int // requests kept at the origin before the refusal
		// live: one more request, its answer begun (a head and a byte).
		live bool
		// malformed: streams x/net resets before any handler (a header
		// field name in upper case: PROTOCOL_ERROR), opened first.
		malformed int
		// refuse sends what has the appliance refuse the client.
		refuse func(pc *probeClient)
		code   string // the GOAWAY's
		why    string // the refusal's reason
		deny   string // the error of the http deny record for the refusal
		status int    // that record's status
	}{
		{
			// 330 HEADERS of 13 bytes in one write: the 401st stream
			// opened and not answered draws the backstop (84c7944).
			name: "unanswered-bound", hang: 100,
			refuse: openUnanswered,
			code:   "ENHANCE_YOUR_CALM", why: "more than 400 streams opened and not answered at once",
			deny: "connection refused: HTTP/2 ENHANCE_YOUR_CALM: more than 400 streams opened and not answered at once",
		},
		{
			// The same with an answer under way, and with 60 streams
			// x/net reset before any handler: their notes, which the
			// 400 unanswered do not count, filled the notes, bounded at
			// 400 too, the older half was dropped, and the waiting
			// requests said the client went away (review rev32b F2).
			name: "unanswered-bound-live", hang: 99, live: true,
			refuse: openUnanswered,
			code:   "ENHANCE_YOUR_CALM", why: "more than 400 streams opened and not answered at once",
			deny: "connection refused: HTTP/2 ENHANCE_YOUR_CALM: more than 400 streams opened and not answered at once",
		},
		{
			name: "unanswered-bound-malformed", hang: 100, malformed: 60,
			refuse: openUnanswered,
			code:   "ENHANCE_YOUR_CALM", why: "more than 400 streams opened and not answered at once",
			deny: "connection refused: HTTP/2 ENHANCE_YOUR_CALM: more than 400 streams opened and not answered at once",
		},
		{
			// One PING of 20,000 bytes, over the 16384 advertised.
			name: "frame-size", hang: 99, live: true, // 100 in flight, as allowed
			refuse: func(pc *probeClient) {
				big := make([]byte, 9+20000)
				big[0], big[1], big[2], big[3] = byte(20000>>16), byte(20000>>8), byte(20000&0xff), 0x6
				pc.mu.Lock()
				defer pc.mu.Unlock()
				pc.c.Write(big)
			},
			code: "FRAME_SIZE_ERROR", why: "a frame of 20000 bytes, over the 16384 advertised",
			deny: "connection refused: HTTP/2 FRAME_SIZE_ERROR: a frame of 20000 bytes, over the 16384 advertised",
		},
		{
			// A header list over the limit: its stream gets a 431, the
			// connection the header list limit's GOAWAY.
			name: "header-list-too-large", hang: 3, live: true,
			refuse: func(pc *probeClient) { sendOversizedList(pc) },
			code:   "ENHANCE_YOUR_CALM", why: listTooLarge, deny: listTooLarge, status: 431,
		},
		{
			// Streams the server resets for the client's protocol error,
			// each WINDOW_UPDATE overflowing its window: those resets are
			// counted as the server writes them, and the writer refuses
			// the client (checkWrittenResets).
			name: "resets-written", hang: 1, live: true,
			refuse: func(pc *probeClient) {
				oneWrite(pc, func(fr *http2.Framer) {
					pc.mu.Lock()
					defer pc.mu.Unlock()
					for range 2 * h2MaxPrematureResets {
						pc.hb.Reset()
						for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"},
							{Name: ":authority", Value: pc.auth}, {Name: ":path", Value: "/hang/reset"}} {
							pc.enc.WriteField(f)
						}
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: pc.next, BlockFragment: pc.hb.Bytes(), EndHeaders: true})
						fr.WriteWindowUpdate(pc.next, 0x7fffffff) // over the client's 1 MiB window
						pc.next += 2
					}
				})
			},
			code: "ENHANCE_YOUR_CALM", why: "streams reset before their response",
			deny: "connection refused: HTTP/2 ENHANCE_YOUR_CALM: ",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			pc, o := newProbeClient(t, r)
			lives := 0
			if tc.live {
				lives = 1
				live := pc.open("GET", "/live/0", true)
				if !waitFor(t, "the live answer's head", waitLimit, func() bool { return pc.status(live) != "" }) {
					t.Fatal("the live answer's head never reached the client")
				}
			}
			if tc.malformed > 0 {
				var last uint32
				for range tc.malformed {
					last = pc.open("GET", "/ok/bad", true, hpack.HeaderField{Name: "X-Upper", Value: "1"})
				}
				if !waitFor(t, "x/net's resets", waitLimit, func() bool { return strings.HasPrefix(pc.status(last), "RST:") }) {
					t.Fatalf("stream %d: %q, want x/net's reset", last, pc.status(last))
				}
			}
			for i := range tc.hang {
				pc.open("GET", fmt.Sprintf("/hang/%d", i), true)
			}
			if !waitFor(t, "the hanging requests at the origin", 2*waitLimit, func() bool { return o.arrived.Load() >= int64(lives+tc.hang) }) {
				t.Fatalf("%d of %d requests reached the origin", o.arrived.Load(), lives+tc.hang)
			}
			tc.refuse(pc)
			if !waitFor(t, "the client's end", 2*waitLimit, pc.connEnded) {
				t.Fatal("the connection was not closed")
			}
			if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, tc.code+" ") {
				t.Errorf("the client got GOAWAY %q, want %s", g, tc.code)
			}
			tlsRec := onlyRecord(t, r, "tls") // the session's last record
			refused := "the appliance refused the connection (GOAWAY " + tc.code + ": "
			says := func(err string) bool { return strings.HasPrefix(err, refused) && strings.Contains(err, tc.why) }
			if tlsRec.Result != "error" || !says(tlsRec.Error) || !strings.HasSuffix(tlsRec.Error, ")") || strings.Contains(tlsRec.Error, " before the response") {
				t.Errorf("tls record result %q error %q, want error, %q", tlsRec.Result, tlsRec.Error, refused+"… "+tc.why+")")
			}
			var deny []records.Record
			hung, lived := 0, 0
			for _, rec := range ofKind(r.records(), "http") {
				switch {
				case rec.Action == "deny" && strings.HasPrefix(rec.Error, tc.deny):
					deny = append(deny, rec)
				case rec.Path == "/live/0":
					lived++
					if rec.Result != "error" || !says(rec.Error) || !strings.Contains(rec.Error, ") before the response ended (1 body bytes passed on)") {
						t.Errorf("%s: result %q error %q, want error, %q before the response ended (1 body bytes passed on)", rec.Path, rec.Result, rec.Error, refused+"… "+tc.why+")")
					}
				case strings.HasPrefix(rec.Path, "/hang/") && rec.Path != "/hang/reset":
					hung++
					if rec.Result != "error" || !says(rec.Error) || !strings.Contains(rec.Error, ") before the response came") {
						t.Errorf("%s: result %q error %q, want error, %q before the response came", rec.Path, rec.Result, rec.Error, refused+"… "+tc.why+")")
					}
				}
			}
			if hung != tc.hang || lived != lives {
				t.Errorf("%d records of the requests waiting for their answer, %d of the live one, want %d and %d", hung, lived, tc.hang, lives)
			}
			if len(deny) != 1 || deny[0].Status != tc.status {
				t.Errorf("deny records %+v, want one, status %d, %q", deny, tc.status, tc.deny)
			}
		})
	}
}

// listTooLarge is the header list limit's words: the limit as HTTP/2
// measures a list, --max-header-bytes with room for ten fields' 32 bytes,
// and how.
var listTooLarge = fmt.Sprintf("request header list larger than %d bytes (its names and values and 32 a field)", intercept.DefaultMaxHeaderBytes+320)

// sendOversizedList opens a stream whose header list is over the limit,
// and returns its id.
func sendOversizedList(pc *probeClient) uint32 {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.hb.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: pc.auth}, {Name: ":path", Value: "/big"},
		{Name: "cookie", Value: strings.Repeat("a", intercept.DefaultMaxHeaderBytes+1000)}} {
		pc.enc.WriteField(f)
	}
	block := pc.hb.Bytes()
	id := pc.next
	pc.next += 2
	pc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:16000], EndStream: true})
	for block = block[16000:]; len(block) > 0; {
		n := min(len(block), 16000)
		pc.fr.WriteContinuation(id, n == len(block), block[:n])
		block = block[n:]
	}
	return id
}

// TestH2HeaderListRefusalAloneLeavesTLSOK: a bumped HTTP/2 client whose
// header list is over the limit, with nothing else under way (its first
// stream, or after a request answered whole), gets its 431 and a GOAWAY,
// and the connection ends, as an HTTP/1 client's does after its 431. The
// tls record said the refusal, `error`, where an HTTP/1 client's stays
// `ok` (the deny record says the 431): a browser with a large cookie
// counted among the errors over HTTP/2 alone (review rev32b F4). Now it
// stays as it was unless a request under way was ended by the refusal
// (TestH2RefusalRecorded, header-list-too-large). The words name the
// limit the list is held to, --max-header-bytes plus 320, not
// --max-header-bytes.
func TestH2HeaderListRefusalAloneLeavesTLSOK(t *testing.T) {
	for _, answeredFirst := range []bool{false, true} {
		t.Run(map[bool]string{false: "first-stream", true: "after-an-answer"}[answeredFirst], func(t *testing.T) {
			r := newRig(t, testPolicy)
			pc, _ := newProbeClient(t, r)
			if answeredFirst {
				ok := pc.open("GET", "/ok/0", true)
				if !waitFor(t, "the answer and its record", waitLimit, func() bool {
					return pc.status(ok) == "200" && len(ofKind(r.records(), "http")) == 1
				}) {
					t.Fatalf("stream %d: %q, want 200 and its record", ok, pc.status(ok))
				}
			}
			id := sendOversizedList(pc)
			tlsRec := onlyRecord(t, r, "tls")
			if got := pc.status(id); got != "431" {
				t.Errorf("stream %d: %q, want 431", id, got)
			}
			if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, "ENHANCE_YOUR_CALM ") {
				t.Errorf("the client got GOAWAY %q, want ENHANCE_YOUR_CALM", g)
			}
			if tlsRec.Result != "ok" || tlsRec.Error != "" {
				t.Errorf("tls record %s %q, want ok, no error (as after an HTTP/1 431)", tlsRec.Result, tlsRec.Error)
			}
			var deny []records.Record
			for _, rec := range ofKind(r.records(), "http") {
				if rec.Action == "deny" {
					deny = append(deny, rec)
				} else if rec.Path != "/ok/0" || rec.Result != "ok" {
					t.Errorf("record %s %s %q", rec.Path, rec.Result, rec.Error)
				}
			}
			if len(deny) != 1 || deny[0].Status != 431 || deny[0].Error != listTooLarge {
				t.Errorf("deny records %+v, want one, 431, %q", deny, listTooLarge)
			}
		})
	}
}

// openUnanswered sends 330 HEADERS of 13 bytes in one write: with 100
// streams unanswered before, the 401st draws the refusal.
func openUnanswered(pc *probeClient) {
	oneWrite(pc, func(fr *http2.Framer) {
		pc.mu.Lock()
		defer pc.mu.Unlock()
		for range 330 {
			pc.hb.Reset()
			for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
				{Name: ":authority", Value: pc.auth}, {Name: ":path", Value: "/ok/x"}} {
				pc.enc.WriteField(f)
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: pc.next, BlockFragment: pc.hb.Bytes(), EndStream: true, EndHeaders: true})
			pc.next += 2
		}
	})
}

// TestH2ResetBeforeRefusalIsTheClients: a client resets /hang/0, its
// request at the origin and unanswered, and sends a PING of 20,000 bytes,
// which the appliance refuses (FRAME_SIZE_ERROR), with /hang/1 under way
// too. The reset came first on the wire, so /hang/0 is the client's going
// away, as it is before the server's own GOAWAY for a connection error:
// it said the refusal when both frames came in the same read, and the
// client's going away when they came apart, the appliance's 4 KiB reads,
// not the client, deciding (review rev32b F3). A reset after the PING,
// which the appliance never reads, ends nothing: /hang/0 says the
// refusal. /hang/1 says the refusal each time, and so does the tls
// record. A reset after a connection error of the client's that the
// appliance reads, before the PING, ends nothing either.
func TestH2ResetBeforeRefusalIsTheClients(t *testing.T) {
	rst := func(id uint32) []byte {
		var b bytes.Buffer
		http2.NewFramer(&b, nil).WriteRSTStream(id, http2.ErrCodeCancel)
		return b.Bytes()
	}
	big := make([]byte, 9+20000) // a PING's header, with its length
	big[0], big[1], big[2], big[3] = byte(20000>>16), byte(20000>>8), byte(20000&0xff), 0x6
	const refused = "the appliance refused the connection (GOAWAY FRAME_SIZE_ERROR: a frame of 20000 bytes, over the 16384 advertised) before the response came"
	const gone = "the client went away before the response came"
	for _, tc := range []struct {
		name string
		// send sends the reset of stream h0 and the PING.
		send func(t *testing.T, pc *probeClient, o *probeOrigin, h0 uint32)
		// hang0 is what /hang/0's record says: result, error's start.
		result, err string
	}{
		{"reset-then-ping-one-write", func(_ *testing.T, pc *probeClient, _ *probeOrigin, h0 uint32) {
			pc.c.Write(append(rst(h0), big...))
		}, "reset", gone},
		{"reset-then-ping-apart", func(t *testing.T, pc *probeClient, o *probeOrigin, h0 uint32) {
			pc.c.Write(rst(h0))
			if !waitFor(t, "the origin's cancel", 2*waitLimit, func() bool { return o.cur.Load() == 1 }) {
				t.Fatal("the reset never reached the origin")
			}
			pc.c.Write(big)
		}, "reset", gone},
		{"ping-then-reset-one-write", func(_ *testing.T, pc *probeClient, _ *probeOrigin, h0 uint32) {
			pc.c.Write(append(bytes.Clone(big), rst(h0)...))
		}, "error", refused},
		// A reset after a connection error the appliance tells as it
		// reads it (a connection WINDOW_UPDATE of 0, an RST_STREAM on
		// the connection), before the PING: the server would never have
		// taken it, as without the PING (records.md), so it ends nothing
		// and /hang/0 says the refusal. It said the client's going away:
		// the notes took resets after such an error only once a graceful
		// GOAWAY was out (review rev33a F1).
		{"window-update-0-then-reset-then-ping", func(_ *testing.T, pc *probeClient, _ *probeOrigin, h0 uint32) {
			var b bytes.Buffer
			fr := http2.NewFramer(&b, nil)
			fr.AllowIllegalWrites = true
			fr.WriteWindowUpdate(0, 0)
			pc.c.Write(append(append(b.Bytes(), rst(h0)...), big...))
		}, "error", refused},
		{"reset-of-the-connection-then-reset-then-ping", func(_ *testing.T, pc *probeClient, _ *probeOrigin, h0 uint32) {
			var b bytes.Buffer
			fr := http2.NewFramer(&b, nil)
			fr.AllowIllegalWrites = true
			fr.WriteRSTStream(0, http2.ErrCodeCancel)
			pc.c.Write(append(append(b.Bytes(), rst(h0)...), big...))
		}, "error", refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			pc, o := newProbeClient(t, r)
			h0 := pc.open("GET", "/hang/0", true)
			pc.open("GET", "/hang/1", true)
			if !waitFor(t, "the requests at the origin", 2*waitLimit, func() bool { return o.cur.Load() == 2 }) {
				t.Fatal("the requests never reached the origin")
			}
			pc.mu.Lock()
			tc.send(t, pc, o, h0)
			pc.mu.Unlock()
			tlsRec := onlyRecord(t, r, "tls")
			if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, "FRAME_SIZE_ERROR ") {
				t.Errorf("the client got GOAWAY %q, want FRAME_SIZE_ERROR", g)
			}
			if want := strings.TrimSuffix(refused, " before the response came"); tlsRec.Result != "error" || tlsRec.Error != want {
				t.Errorf("tls record %s %q, want error %q", tlsRec.Result, tlsRec.Error, want)
			}
			seen := 0
			for _, rec := range ofKind(r.records(), "http") {
				result, err := "error", refused
				switch rec.Path {
				case "/hang/0":
					result, err = tc.result, tc.err
				case "/hang/1":
				default:
					continue
				}
				seen++
				if rec.Result != result || !strings.HasPrefix(rec.Error, err) {
					t.Errorf("%s: %s %q, want %s %q…", rec.Path, rec.Result, rec.Error, result, err)
				}
			}
			if seen != 2 {
				t.Errorf("%d records of /hang/0 and /hang/1, want 2", seen)
			}
		})
	}
}
