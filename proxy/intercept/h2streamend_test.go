package intercept_test

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The client's frames that have the appliance's own HTTP/2 server (x/net,
// facing the client) reset a stream while its request is at the
// destination, each by the reset it draws.
var h2ServerResets = []struct {
	name string
	// live: the request is a GET whose answer streams (a head and a
	// byte, then nothing) before the frame; ended: a GET with no body,
	// else a POST whose body is under way (5 bytes sent).
	live, ended bool
	act         func(pc *probeClient, id uint32)
	rst         string // what the client gets: the server's RST_STREAM code
}{
	{name: "window-update-0", act: windowUpdate0, rst: "PROTOCOL_ERROR"},
	{name: "priority-on-itself", act: func(pc *probeClient, id uint32) {
		pc.mu.Lock()
		defer pc.mu.Unlock()
		pc.fr.AllowIllegalWrites = true
		pc.fr.WritePriority(id, http2.PriorityParam{StreamDep: id, Weight: 15})
	}, rst: "PROTOCOL_ERROR"},
	{name: "trailers-without-end-stream", act: func(pc *probeClient, id uint32) {
		pc.mu.Lock()
		defer pc.mu.Unlock()
		pc.hb.Reset()
		pc.enc.WriteField(hpack.HeaderField{Name: "x-trailer", Value: "1"})
		pc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: pc.hb.Bytes(), EndHeaders: true})
	}, rst: "PROTOCOL_ERROR"},
	{name: "stream-window-overflow", act: func(pc *probeClient, id uint32) {
		// Not read by the appliance as it comes (the window is x/net's):
		// its reset is seen only as x/net writes it.
		pc.window(id, 0x7fffffff)
		pc.window(id, 0x7fffffff)
	}, rst: "FLOW_CONTROL_ERROR"},
	{name: "data-after-end-stream", ended: true, act: func(pc *probeClient, id uint32) {
		pc.data(id, []byte("late"), false)
	}, rst: "STREAM_CLOSED"},
	{name: "window-update-0-while-answered", live: true, act: windowUpdate0, rst: "PROTOCOL_ERROR"},
}

func windowUpdate0(pc *probeClient, id uint32) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.fr.AllowIllegalWrites = true
	pc.fr.WriteWindowUpdate(id, 0)
}

// TestH2ServerResetRecorded: a stream the appliance's own HTTP/2 server
// resets for the client's protocol error, its request at the
// destination, was recorded word for word as the client's own
// RST_STREAM: `reset`, "the client went away" (review records30 F1), of a
// client still connected, just sent that reset. Now the record says the
// server reset it, with the code the client got, and `error`; the
// client's own RST_STREAM is still `reset`, "the client went away".
func TestH2ServerResetRecorded(t *testing.T) {
	for _, tc := range h2ServerResets {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			pc, o := newProbeClient(t, r)
			id, path := openUnderway(t, pc, o.has, tc.live, tc.ended)
			tc.act(pc, id)
			rec := onlyHTTPRecord(t, r)
			waitFor(t, "the client's answer", waitLimit, func() bool { return pc.status(id) != "" })
			if got, want := pc.status(id), "RST:"+tc.rst; !tc.live && got != want {
				t.Errorf("the client got %q, want %q", got, want)
			}
			if rec.Path != path {
				t.Errorf("record for %q, want %q", rec.Path, path)
			}
			when := "before the response came"
			if tc.live {
				when = "before the response ended (1 body bytes passed on)"
				if rec.Status != 200 {
					t.Errorf("record status %d, want the 200 that went out", rec.Status)
				}
			}
			want := "reset by the appliance's HTTP/2 server for the client's protocol error (RST_STREAM " + tc.rst + ") " + when
			if rec.Result != "error" || !strings.HasPrefix(rec.Error, want) {
				t.Errorf("record result %q error %q, want error, %q", rec.Result, rec.Error, want)
			}
			select {
			case <-pc.dead:
				t.Error("the client's connection ended: only its stream was to")
			default:
			}
			pc.c.Close()
			tlsRec := onlyRecord(t, r, "tls")
			if tlsRec.Result != "ok" || tlsRec.Error != "" {
				t.Errorf("tls record result %q error %q, want ok: the connection ended as the client closed it", tlsRec.Result, tlsRec.Error)
			}
		})
	}
}

// TestH2ClientResetStillRecordedSo: the client's own RST_STREAM, the
// request at the destination, is the client's going away, as before;
// so is its WINDOW_UPDATE of 0 sent after its RST_STREAM, which x/net
// ignores on the closed stream.
func TestH2ClientResetStillRecordedSo(t *testing.T) {
	for _, then := range []bool{false, true} {
		r := newRig(t, testPolicy)
		pc, o := newProbeClient(t, r)
		id, _ := openUnderway(t, pc, o.has, false, false)
		pc.reset(id)
		if then {
			windowUpdate0(pc, id)
		}
		rec := onlyHTTPRecord(t, r)
		if want := "the client went away before the response came"; rec.Result != "reset" || !strings.HasPrefix(rec.Error, want) {
			t.Errorf("window update after: %v: record result %q error %q, want reset, %q", then, rec.Result, rec.Error, want)
		}
	}
}

// TestH2ServerGoAwayRecorded: a connection error of the client's (here a
// connection WINDOW_UPDATE of 0) has the appliance's HTTP/2 server send
// a GOAWAY and close the connection, a request at the destination; the
// tls record said ok, with no error, and the request "the client went
// away" (review records30 F2). Both now say the server closed it, and
// why.
func TestH2ServerGoAwayRecorded(t *testing.T) {
	r := newRig(t, testPolicy)
	pc, o := newProbeClient(t, r)
	openUnderway(t, pc, o.has, false, false)
	windowUpdate0(pc, 0)
	wantServerGoAwayRecords(t, r, pc, "PROTOCOL_ERROR")
}

// wantServerGoAwayRecords checks that the client got the appliance's
// GOAWAY of code, and that the request under way and the tls record say
// the appliance's HTTP/2 server closed the connection with it.
func wantServerGoAwayRecords(t *testing.T, r *rig, pc *probeClient, code string) {
	t.Helper()
	rec := onlyHTTPRecord(t, r)
	goAway := "the appliance's HTTP/2 server closed the connection for the client's protocol error (GOAWAY " + code + ")"
	if rec.Result != "error" || !strings.HasPrefix(rec.Error, goAway+" before the response came") {
		t.Errorf("record result %q error %q, want error, %q before the response came", rec.Result, rec.Error, goAway)
	}
	if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, code) {
		t.Errorf("the client got GOAWAY %q, want %s", g, code)
	}
	tlsRec := onlyRecord(t, r, "tls")
	if tlsRec.Result != "error" || tlsRec.Error != goAway {
		t.Errorf("tls record result %q error %q, want error, %q", tlsRec.Result, tlsRec.Error, goAway)
	}
}

// TestH2GoAwayThenStreamFrameRecorded: a connection error of the
// client's (a connection WINDOW_UPDATE of 0) and, in the same write, a
// frame that would have the server reset a stream whose request is at
// the destination (a PRIORITY on which it depends on itself). x/net
// answers the first with a GOAWAY and processes nothing after it: the
// client gets no RST_STREAM, and the stream ends with the connection.
// The record says the GOAWAY. Before, the reader had noted the second
// frame's reset before x/net's writer had the GOAWAY out, and the record
// said "reset by the appliance's HTTP/2 server ... (RST_STREAM
// PROTOCOL_ERROR)", a frame the client never got (review rev30b F2).
func TestH2GoAwayThenStreamFrameRecorded(t *testing.T) {
	for round := range 3 {
		r := newRig(t, testPolicy)
		pc, o := newProbeClient(t, r)
		id, _ := openUnderway(t, pc, o.has, false, false)
		oneWrite(pc, func(fr *http2.Framer) { // one write: the limit reads both before x/net acts on the first
			fr.WriteWindowUpdate(0, 0)
			fr.WritePriority(id, http2.PriorityParam{StreamDep: id, Weight: 15})
		})
		rec := onlyHTTPRecord(t, r)
		waitFor(t, "the client's end", waitLimit, pc.connEnded)
		if st := pc.status(id); strings.HasPrefix(st, "RST:") {
			t.Fatalf("round %d: the client got %q: x/net processed the frame after its GOAWAY; the test proves nothing", round, st)
		}
		if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, "PROTOCOL_ERROR") {
			t.Errorf("round %d: the client got GOAWAY %q, want PROTOCOL_ERROR", round, g)
		}
		want := "the appliance's HTTP/2 server closed the connection for the client's protocol error (GOAWAY PROTOCOL_ERROR) before the response came"
		if rec.Result != "error" || !strings.HasPrefix(rec.Error, want) {
			t.Errorf("round %d: record result %q error %q, want error, %q", round, rec.Result, rec.Error, want)
		}
	}
}

// TestH2ClientResetBesideGoAwayRecorded: a connection error of the
// client's (a connection WINDOW_UPDATE of 0) and its own RST_STREAM of a
// stream whose request is at the destination, in one write. x/net takes
// the client's frames in their order on the wire: a reset first ends the
// stream (the client's going away), and the connection error after it
// the connection; a reset after the connection error is never processed
// (x/net processes no frame after its GOAWAY), and the stream ends with
// the connection. The request's record and the tls record tell that one
// story. Before, the reader noted the reset as the client's as it read
// it, whatever came before it: after the error, the request's record said
// the client went away while the tls record said the appliance's server
// closed the connection (review rev30d F2).
func TestH2ClientResetBesideGoAwayRecorded(t *testing.T) {
	goAway := "the appliance's HTTP/2 server closed the connection for the client's protocol error (GOAWAY PROTOCOL_ERROR)"
	for _, tc := range []struct {
		name       string
		resetFirst bool
		result     string
		err        string
	}{
		{"reset-after-error", false, "error", goAway + " before the response came"},
		{"reset-before-error", true, "reset", "the client went away before the response came"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := range 3 {
				r := newRig(t, testPolicy)
				pc, o := newProbeClient(t, r)
				id, _ := openUnderway(t, pc, o.has, false, false)
				oneWrite(pc, func(fr *http2.Framer) { // one write: the limit reads both before x/net acts on the first
					if tc.resetFirst {
						fr.WriteRSTStream(id, http2.ErrCodeCancel)
					}
					fr.WriteWindowUpdate(0, 0)
					if !tc.resetFirst {
						fr.WriteRSTStream(id, http2.ErrCodeCancel)
					}
				})
				rec := onlyHTTPRecord(t, r)
				// The record of a stream the client reset first may come
				// before the GOAWAY reaches the client.
				waitFor(t, "the GOAWAY", waitLimit, func() bool { g, _ := pc.goneA.Load().(string); return g != "" })
				if g, _ := pc.goneA.Load().(string); !strings.HasPrefix(g, "PROTOCOL_ERROR") {
					t.Errorf("round %d: the client got GOAWAY %q, want PROTOCOL_ERROR", round, g)
				}
				if rec.Result != tc.result || !strings.HasPrefix(rec.Error, tc.err) {
					t.Errorf("round %d: record result %q error %q, want %s, %q", round, rec.Result, rec.Error, tc.result, tc.err)
				}
				if tlsRec := onlyRecord(t, r, "tls"); tlsRec.Result != "error" || tlsRec.Error != goAway {
					t.Errorf("round %d: tls record result %q error %q, want error, %q", round, tlsRec.Result, tlsRec.Error, goAway)
				}
			}
		})
	}
}

// TestH2MalformedClientResetRecorded: a client's RST_STREAM of 8 bytes,
// not 4, on a stream whose request is at the destination, is no reset of
// the stream to x/net but a connection error (FRAME_SIZE_ERROR): it sends
// a GOAWAY and closes the connection. The request's record says so, as
// the tls record does. Before, the reader took the frame for the
// client's reset at its header: the request said the client went away
// (reset), the tls record that the appliance's server closed the
// connection (review rev30b F3).
func TestH2MalformedClientResetRecorded(t *testing.T) {
	r := newRig(t, testPolicy)
	pc, o := newProbeClient(t, r)
	id, _ := openUnderway(t, pc, o.has, false, false)
	pc.mu.Lock()
	pc.fr.WriteRawFrame(http2.FrameRSTStream, 0, id, []byte{0, 0, 0, 8, 0, 0, 0, 0})
	pc.mu.Unlock()
	wantServerGoAwayRecords(t, r, pc, "FRAME_SIZE_ERROR")
}

// TestH2ServerGoAwayWhileAnswered: the same GOAWAY with the response
// under way (its head and a byte at the client): the record says the
// GOAWAY, with what of the body passed, in the words of records.md's
// response-body paragraph, which named the server's RST_STREAM instead
// (review rev30b F4).
func TestH2ServerGoAwayWhileAnswered(t *testing.T) {
	r := newRig(t, testPolicy)
	pc, o := newProbeClient(t, r)
	openUnderway(t, pc, o.has, true, false)
	windowUpdate0(pc, 0)
	rec := onlyHTTPRecord(t, r)
	want := "the appliance's HTTP/2 server closed the connection for the client's protocol error (GOAWAY PROTOCOL_ERROR) before the response ended (1 body bytes passed on)"
	if rec.Status != 200 || rec.Result != "error" || !strings.HasPrefix(rec.Error, want) {
		t.Errorf("record status %d result %q error %q, want 200, error, %q", rec.Status, rec.Result, rec.Error, want)
	}
}

// TestH2CServerEndsRecorded: the same over cleartext HTTP/2 (h2c), served
// by the same server: a stream it reset, and a connection it closed.
func TestH2CServerEndsRecorded(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		act        func(pc *probeClient, id uint32)
	}{
		{"stream", "reset by the appliance's HTTP/2 server for the client's protocol error (RST_STREAM PROTOCOL_ERROR) before the response came", windowUpdate0},
		{"stream-window-overflow", "reset by the appliance's HTTP/2 server for the client's protocol error (RST_STREAM FLOW_CONTROL_ERROR) before the response came",
			func(pc *probeClient, id uint32) { pc.window(id, 0x7fffffff); pc.window(id, 0x7fffffff) }},
		{"connection", "the appliance's HTTP/2 server closed the connection for the client's protocol error (GOAWAY PROTOCOL_ERROR) before the response came",
			func(pc *probeClient, _ uint32) { windowUpdate0(pc, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, originEnd := testnet.TCPPair(t)
			o := startKeptOrigin(t, originEnd, "", "")
			c, _ := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(2 * waitLimit))
			pc := newProbeClientOn(t, c, "http")
			id, _ := openUnderway(t, pc, func(string) bool { return o.has("hello") }, false, false)
			tc.act(pc, id)
			rec := onlyHTTPRecord(t, r)
			if rec.Result != "error" || !strings.HasPrefix(rec.Error, tc.want) {
				t.Errorf("record result %q error %q, want error, %q", rec.Result, rec.Error, tc.want)
			}
		})
	}
}

// openUnderway opens a request on pc whose head (and body's start) the
// origin has, and its answer not come: a POST of 5 body bytes, its body
// left open; a bodiless GET if ended; a GET of an answer that streams,
// its head and first byte at the client, if live. has says whether the
// origin got a path.
func openUnderway(t *testing.T, pc *probeClient, has func(string) bool, live, ended bool) (uint32, string) {
	t.Helper()
	var id uint32
	path := "/hang/1"
	switch {
	case live:
		path = "/live/1"
		id = pc.open("GET", path, true)
	case ended:
		id = pc.open("GET", path, true)
	default:
		id = pc.open("POST", path, false)
		pc.data(id, []byte("hello"), false)
	}
	if !waitFor(t, "the origin's request", waitLimit, func() bool { return has(path) }) {
		t.Fatal("the request never reached the origin")
	}
	if live && !waitFor(t, "the answer's head", waitLimit, func() bool { return pc.status(id) != "" }) {
		t.Fatal("the answer's head never reached the client")
	}
	return id, path
}

// onlyHTTPRecord waits for the session's one http record.
func onlyHTTPRecord(t *testing.T, r *rig) records.Record {
	t.Helper()
	return onlyRecord(t, r, "http")
}

// onlyRecord waits for the session's record of kind, and checks it is
// the only one.
func onlyRecord(t *testing.T, r *rig, kind string) records.Record {
	t.Helper()
	var recs []records.Record
	if !waitFor(t, kind+" record", 2*waitLimit, func() bool { recs = ofKind(r.records(), kind); return len(recs) > 0 }) {
		t.Fatalf("no %s record", kind)
	}
	if len(recs) != 1 {
		t.Fatalf("%d %s records, want 1: %+v", len(recs), kind, recs)
	}
	return recs[0]
}

// TestH2ContentLengthOverrunRecorded: DATA beyond the request's
// content-length (here 5, and 10 bytes sent; and a content-length that is
// no number, which x/net holds to 0) has the appliance's HTTP/2 server
// reset the stream (PROTOCOL_ERROR), and close the request's body with
// its error: the record says one or the other, never the client's going
// away, which it said before.
func TestH2ContentLengthOverrunRecorded(t *testing.T) {
	for _, cl := range []string{"5", "five"} {
		r := newRig(t, testPolicy)
		pc, o := newProbeClient(t, r)
		id := pc.open("POST", "/hang/cl", false, hpack.HeaderField{Name: "content-length", Value: cl})
		if !waitFor(t, "the origin's request", waitLimit, func() bool { return o.has("/hang/cl") }) {
			t.Fatal("the request never reached the origin")
		}
		pc.data(id, []byte("0123456789"), false)
		rec := onlyHTTPRecord(t, r)
		reset := "reset by the appliance's HTTP/2 server for the client's protocol error (RST_STREAM PROTOCOL_ERROR) before the response came"
		if !(rec.Result == "error" && (strings.HasPrefix(rec.Error, reset) || strings.HasPrefix(rec.Error, "malformed request body: "))) {
			t.Errorf("content-length %s: record result %q error %q, want error, the server's reset or the malformed body", cl, rec.Result, rec.Error)
		}
		t.Logf("content-length %s: %s", cl, rec.Error)
	}
}
