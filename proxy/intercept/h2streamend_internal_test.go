package intercept

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2StreamIDOf: the stream id read from a request's body as x/net's
// server made it is the stream's, a bodiless request's too; a body of
// any other kind gives 0. If x/net is ever laid out otherwise this fails,
// rather than the records quietly losing what ended each stream.
func TestH2StreamIDOf(t *testing.T) {
	if id := h2StreamIDOf(http.NoBody); id != 0 {
		t.Errorf("http.NoBody: id %d, want 0", id)
	}
	if id := h2StreamIDOf(nil); id != 0 {
		t.Errorf("nil: id %d, want 0", id)
	}
	if id := h2StreamIDOf(io.NopCloser(strings.NewReader("x"))); id != 0 {
		t.Errorf("another body: id %d, want 0", id)
	}
	srv, cli := net.Pipe()
	defer cli.Close()
	var mu sync.Mutex
	got := map[string]uint32{}
	go (&http2.Server{}).ServeConn(srv, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[r.Method+" "+r.URL.Path] = h2StreamIDOf(r.Body)
		mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
	})})
	tr := &http2.Transport{AllowHTTP: true}
	cc, err := tr.NewClientConn(cli)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []struct{ method, path, body string }{
		{"GET", "/a", ""}, {"POST", "/b", "hello"}, {"GET", "/c", ""},
	} {
		var body io.Reader
		if req.body != "" {
			body = strings.NewReader(req.body)
		}
		r, _ := http.NewRequest(req.method, "http://x"+req.path, body)
		resp, err := cc.RoundTrip(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	for k, want := range map[string]uint32{"GET /a": 1, "POST /b": 3, "GET /c": 5} {
		if got[k] != want {
			t.Errorf("%s: stream id %d, want %d", k, got[k], want)
		}
	}
}

// TestH2StreamNotes: what ended a stream is the first thing noted of it;
// a reset the reader notes after the server's GOAWAY is none (x/net reads
// no more frames then), one the writer wrote is; streams not noted, or
// dropped, take nothing.
func TestH2StreamNotes(t *testing.T) {
	var n h2StreamNotes
	for id := uint32(1); id <= 9; id += 2 {
		n.open(id)
	}
	n.client(1)
	n.server(1, http2.ErrCodeProtocol, false) // after the client's: the client's
	n.server(3, http2.ErrCodeStreamClosed, false)
	n.client(3) // after the server's: the server's
	// Seen going out before the GOAWAY (unseen, the GOAWAY ended it:
	// TestH2StreamNotesForeseenReset).
	n.server(3, http2.ErrCodeStreamClosed, true)
	n.server(5, http2.ErrCodeInternal, true) // not for the client's error: nothing
	n.server(5, http2.ErrCodeCancel, true)   // (REFUSED_STREAM drops the note: TestH2StreamNotesDeadDroppedFirst)
	n.server(11, http2.ErrCodeProtocol, false)
	n.serverGoAway(http2.ErrCodeNo) // graceful: nothing
	if _, ok := n.serverEnd(); ok {
		t.Error("a GOAWAY with NO_ERROR noted as the server's end")
	}
	n.serverGoAway(http2.ErrCodeFlowControl)
	n.server(7, http2.ErrCodeProtocol, false) // read after it: x/net ignores it
	n.server(9, http2.ErrCodeFlowControl, true)
	// Stream 1's request: its context done, as x/net processed the
	// client's reset before the frame that drew the GOAWAY
	// (TestH2StreamNotesClientResetBesideGoAway).
	reset, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		id    uint32
		ended uint8
		code  http2.ErrCode
	}{
		{1, h2EndedClient, 0}, {3, h2EndedServer, http2.ErrCodeStreamClosed}, {5, h2EndedNot, 0},
		{7, h2EndedNot, 0}, {9, h2EndedServer, http2.ErrCodeFlowControl},
	} {
		ctx := context.Background()
		if tc.id == 1 {
			ctx = reset
		}
		e := n.claim(tc.id, ctx)
		if e == nil {
			t.Fatalf("stream %d: no note", tc.id)
		}
		ended, code, goAway, goneAway := e.end() // the connection's GOAWAY: no wait
		if ended != tc.ended || code != tc.code || !goneAway || goAway != http2.ErrCodeFlowControl {
			t.Errorf("stream %d: ended %d code %v GOAWAY %v %v, want %d %v, and the GOAWAY FLOW_CONTROL_ERROR",
				tc.id, ended, code, goneAway, goAway, tc.ended, tc.code)
		}
		e.release()
	}
	if e := n.claim(11, context.Background()); e != nil {
		t.Error("stream 11, never opened, has a note")
	}
	if len(n.m) != 0 {
		t.Errorf("%d notes left after every request's release", len(n.m))
	}
}

// TestH2StreamNotesForeseenReset: a reset the reader foresaw (the
// client's frame that draws it came in) ends its stream unless the
// server's GOAWAY for a connection error went out and the reset did not:
// x/net then processed no frame after the one that broke the connection,
// and writes no frame it had queued, and the stream ends with the
// connection (review rev30b F2). One seen going out stays, with the code
// written.
func TestH2StreamNotesForeseenReset(t *testing.T) {
	var n h2StreamNotes
	for id := uint32(1); id <= 5; id += 2 {
		n.open(id)
	}
	n.server(1, http2.ErrCodeProtocol, false) // foreseen, never written
	n.server(3, http2.ErrCodeProtocol, false) // foreseen, then written
	n.server(3, http2.ErrCodeStreamClosed, true)
	n.server(5, http2.ErrCodeProtocol, true) // written, not foreseen
	e1, e3, e5 := n.claim(1, context.Background()), n.claim(3, context.Background()), n.claim(5, context.Background())
	if ended, code, _, _ := e1.look(); ended != h2EndedServer || code != http2.ErrCodeProtocol {
		t.Errorf("a foreseen reset, no GOAWAY: ended %d code %v, want the server's PROTOCOL_ERROR", ended, code)
	}
	n.serverGoAway(http2.ErrCodeProtocol)
	for _, tc := range []struct {
		e     *h2StreamNote
		ended uint8
		code  http2.ErrCode
	}{{e1, h2EndedNot, 0}, {e3, h2EndedServer, http2.ErrCodeStreamClosed}, {e5, h2EndedServer, http2.ErrCodeProtocol}} {
		for _, f := range []func() (uint8, http2.ErrCode, http2.ErrCode, bool){tc.e.look, tc.e.end} {
			ended, code, goAway, goneAway := f()
			if ended != tc.ended || code != tc.code || !goneAway || goAway != http2.ErrCodeProtocol {
				t.Errorf("stream %d after the GOAWAY: ended %d code %v GOAWAY %v %v, want %d %v and the GOAWAY",
					tc.e.id, ended, code, goneAway, goAway, tc.ended, tc.code)
			}
		}
	}
}

// TestH2StreamNotesClientResetBesideGoAway: a client's reset the reader
// noted stays the client's when x/net had processed it as the server's
// GOAWAY for a connection error went out (the request's context done
// then: the reset came before the frame that broke the connection), and
// is none when it had not (it came after that frame, and x/net never
// processes it: review rev30d F2), whether the request was claimed before
// the GOAWAY or after; one noted after the GOAWAY is none.
func TestH2StreamNotesClientResetBesideGoAway(t *testing.T) {
	var n h2StreamNotes
	for id := uint32(1); id <= 9; id += 2 {
		n.open(id)
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	live := context.Background()
	e1, e3 := n.claim(1, done), n.claim(3, live)
	for id := uint32(1); id <= 7; id += 2 {
		n.client(id)
	}
	n.serverGoAway(http2.ErrCodeProtocol)
	n.client(9) // read after the GOAWAY went out
	e5, e7, e9 := n.claim(5, done), n.claim(7, live), n.claim(9, live)
	for _, tc := range []struct {
		e     *h2StreamNote
		ended uint8
	}{{e1, h2EndedClient}, {e3, h2EndedNot}, {e5, h2EndedClient}, {e7, h2EndedNot}, {e9, h2EndedNot}} {
		if ended, _, goAway, goneAway := tc.e.look(); ended != tc.ended || !goneAway || goAway != http2.ErrCodeProtocol {
			t.Errorf("stream %d: ended %d GOAWAY %v %v, want %d and the GOAWAY", tc.e.id, ended, goneAway, goAway, tc.ended)
		}
	}
}

// TestH2StreamNotesBounded: past h2MaxEndNotes streams noted, the older
// half is dropped; a request on a dropped stream finds no note (and is
// recorded as before), the newer ones keep theirs.
func TestH2StreamNotesBounded(t *testing.T) {
	var n h2StreamNotes
	n.open(1)
	n.open(3)
	held, ended := n.claim(1, context.Background()), n.claim(3, context.Background()) // requests under way
	n.client(3)
	last := uint32(2*h2MaxEndNotes + 1)
	for id := uint32(5); id <= last; id += 2 {
		n.open(id)
	}
	// The client's RST_STREAM on stream 1, once its note is dropped, is
	// not seen: the request that holds it reads no end from it.
	n.client(1)
	if e, _, _, _ := held.look(); e != h2EndedUnknown {
		t.Errorf("a dropped note, its stream's end unseen, says %d, want unknown", e)
	}
	if e, _, _, _ := ended.look(); e != h2EndedClient {
		t.Errorf("a dropped note whose stream had ended says %d, want still the client's", e)
	}
	if len(n.m) > h2MaxEndNotes {
		t.Fatalf("%d notes, want at most %d", len(n.m), h2MaxEndNotes)
	}
	if n.claim(1, context.Background()) != nil {
		t.Error("the oldest stream's note was kept")
	}
	if n.claim(last, context.Background()) == nil {
		t.Error("the newest stream's note was dropped")
	}
}

// TestH2StreamEndWaits: a request whose stream's end is not noted yet
// waits for the writer's note of the server's reset (x/net cancels the
// request before it flushes the reset), or for the connection's close.
func TestH2StreamEndWaits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		then  func(n *h2StreamNotes)
		ended uint8
	}{
		{"reset written", func(n *h2StreamNotes) { n.server(1, http2.ErrCodeFlowControl, true) }, h2EndedServer},
		{"connection closed", func(n *h2StreamNotes) { n.connClosed(false) }, h2EndedNot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n h2StreamNotes
			n.open(1)
			e := n.claim(1, context.Background())
			done := make(chan uint8)
			go func() {
				ended, _, _, _ := e.end()
				done <- ended
			}()
			select {
			case <-done:
				t.Fatal("end returned with nothing noted")
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			tc.then(&n)
			select {
			case ended := <-done:
				if ended != tc.ended {
					t.Errorf("ended %d, want %d", ended, tc.ended)
				}
				if d := time.Since(start); d > h2EndWait/2 {
					t.Errorf("end returned %v after the note, want at once", d)
				}
			case <-time.After(2 * h2EndWait):
				t.Fatal("end did not return")
			}
		})
	}
}

// TestH2FramesGoAway: the server's GOAWAY is noted with its code however
// its bytes are cut into writes; a graceful one (NO_ERROR) is not.
func TestH2FramesGoAway(t *testing.T) {
	for _, code := range []http2.ErrCode{http2.ErrCodeProtocol, http2.ErrCodeNo} {
		var buf bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		_ = fr.WriteRSTStream(3, http2.ErrCodeStreamClosed)
		_ = fr.WriteGoAway(7, code, []byte("why"))
		b := buf.Bytes()
		for cut := 1; cut < len(b); cut++ {
			u := &h2Unanswered{}
			u.open(3, true)
			var f h2Frames
			f.advance(b[:cut], u)
			f.advance(b[cut:], u)
			got, ok := u.ends.serverEnd()
			if want := code != http2.ErrCodeNo; ok != want || ok && got != code {
				t.Fatalf("code %v, cut at %d: noted %v %v", code, cut, ok, got)
			}
			e := u.ends.claim(3, context.Background())
			if ended, c, _, _ := e.end(); ended != h2EndedServer || c != http2.ErrCodeStreamClosed {
				t.Fatalf("cut at %d: stream 3 ended %d by %v, want the server's STREAM_CLOSED", cut, ended, c)
			}
		}
	}
}

// TestH2StreamNotesClosedAfterGraceful: the connection's close counts as
// the server's own after its graceful GOAWAY only with the client's side
// whole, and no GOAWAY for a connection error (which says the close
// itself); a request ended by it marks the connection for its tls record.
func TestH2StreamNotesClosedAfterGraceful(t *testing.T) {
	for _, tc := range []struct {
		name                string
		graceful, goAway    bool
		byServer, cutByServ bool
	}{
		{"graceful, closed by the server", true, false, true, true},
		{"graceful, the client's side ended", true, false, false, false},
		{"no graceful GOAWAY", false, false, true, false},
		{"graceful, then a GOAWAY for an error", true, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n h2StreamNotes
			if tc.graceful {
				n.serverGoAway(http2.ErrCodeNo)
			}
			if tc.goAway {
				n.serverGoAway(http2.ErrCodeProtocol)
			}
			if n.cutRequest() {
				t.Fatal("a request cut before any close")
			}
			n.connClosed(tc.byServer)
			n.connClosed(false) // goproxy's second Close changes nothing
			if got := n.cutByServer(); got != tc.cutByServ {
				t.Errorf("cutByServer %v, want %v", got, tc.cutByServ)
			}
			if got := n.cutRequest(); got != tc.cutByServ {
				t.Errorf("cutRequest %v, want %v", got, tc.cutByServ)
			}
		})
	}
}

// TestH2StreamNotesDeadDroppedFirst: at the bound, the notes no request
// will take up go first: streams no handler took up whose end was read
// (x/net's reset written, the client's reset); a stream x/net refused
// (REFUSED_STREAM) loses its note at once. The bound was the unanswered
// streams' own, and only the older half went: a client with a stream
// answered and under way, or streams x/net had reset before a handler,
// had the notes of its oldest waiting requests dropped, recorded as the
// client's going away when the appliance refused it (review rev32b F2).
// Now the requests under way keep their notes, and what ends them is
// still seen; past h2LiveEndNotes live notes, the older half goes as
// before (TestH2StreamNotesBounded).
func TestH2StreamNotesDeadDroppedFirst(t *testing.T) {
	var n h2StreamNotes
	n.open(1)
	under := n.claim(1, context.Background()) // its answer under way
	id := uint32(3)
	next := func() uint32 { id += 2; return id - 2 }
	refused := next()
	n.open(refused)
	n.server(refused, http2.ErrCodeRefusedStream, true)
	if n.m[refused] != nil {
		t.Error("the note of a stream x/net refused was kept")
	}
	resetDone := next() // claimed, then reset by the client: its request still holds it
	n.open(resetDone)
	heldReset := n.claim(resetDone, context.Background())
	n.client(resetDone)
	var dead []uint32
	for len(n.m) < h2MaxEndNotes-h2LiveEndNotes/2 {
		d := next()
		n.open(d)
		if d%4 == 1 {
			n.server(d, http2.ErrCodeProtocol, true) // x/net's, before a handler
		} else {
			n.client(d)
		}
		dead = append(dead, d)
	}
	for len(n.m) < h2MaxEndNotes {
		n.open(next()) // waiting, unanswered
	}
	n.open(next()) // one past the bound
	if e := n.m[1]; e != under {
		t.Fatal("the note of the request under way was dropped")
	}
	if n.m[resetDone] != heldReset {
		t.Fatal("the note of a request whose stream the client reset was dropped")
	}
	for _, d := range dead {
		if n.m[d] != nil {
			t.Fatalf("stream %d, no request's and ended, kept", d)
		}
	}
	if len(n.m) > h2LiveEndNotes {
		t.Errorf("%d notes, want at most %d", len(n.m), h2LiveEndNotes)
	}
	n.server(1, http2.ErrCodeProtocol, true)
	if ended, code, _, _ := under.look(); ended != h2EndedServer || code != http2.ErrCodeProtocol {
		t.Errorf("the request under way reads %d %v, want the server's reset", ended, code)
	}
	if ended, _, _, _ := heldReset.look(); ended != h2EndedClient {
		t.Errorf("the request whose stream the client reset reads %d, want the client's", ended)
	}
}
