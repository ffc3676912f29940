package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// awaitRecord waits up to limit for the record of path; nil if none came.
func awaitRecord(t *testing.T, r *rig, path string, limit time.Duration) *records.Record {
	t.Helper()
	for end := time.Now().Add(limit); ; time.Sleep(20 * time.Millisecond) {
		for _, rec := range ofKind(r.records(), "http") {
			if rec.Path == path {
				return &rec
			}
		}
		if time.Now().After(end) {
			return nil
		}
	}
}

// expectClosed checks that the appliance closes c within limit, with no
// further response.
func expectClosed(t *testing.T, c net.Conn, br *bufio.Reader, limit time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	if b, err := br.ReadByte(); err == nil {
		t.Errorf("after the answer: byte %q, want the connection closed", b)
	} else if err != io.EOF && !strings.Contains(err.Error(), "reset") {
		t.Errorf("after the answer: %v, want the connection closed within %v", err, limit)
	}
}

// checkNotRead checks the record of POST /a once the drain gave up: the
// origin's status, result ok, and an error that says what was not read.
func checkNotRead(t *testing.T, rec *records.Record, action string, status int, why string) {
	t.Helper()
	want := "the rest of the request body was not read (" + why
	if rec.Action != action || rec.Status != status || rec.Result != "ok" || !strings.HasPrefix(rec.Error, want) {
		t.Errorf("record %s status %d result %s error %q, want %s %d ok %q...", rec.Action, rec.Status, rec.Result, rec.Error, action, status, want)
	}
}

// awaitNotRead waits up to limit for the record of POST /a, failing the
// test if none comes, and checks it as checkNotRead does.
func awaitNotRead(t *testing.T, r *rig, action string, status int, why string, limit time.Duration) {
	t.Helper()
	rec := awaitRecord(t, r, "/a", limit)
	if rec == nil {
		t.Fatalf("no record %v after the answer", limit)
	}
	checkNotRead(t, rec, action, status, why)
}

// trickle writes piece to c every 200 ms, as a client that sends its body
// now and then and never ends it, until a write fails or the returned
// stop is called.
func trickle(c net.Conn, piece string) (stop func()) {
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if _, err := io.WriteString(c, piece); err != nil {
				return
			}
		}
	}()
	return func() { close(done) }
}

// TestChunkDrainTrickle: after the origin's early answer, the client
// sends a chunk of its body now and then, and never ends it. The
// request's record must come within the drain's bound (2 s) of the
// answer's end, result ok with the note that the rest of the body was not
// read, and the connection must close. Before, the record waited for the
// body's end with no bound (TestProbeR3RecordHeld: "3 s after the
// origin's answer: 0 http records"). Cleartext and bumped.
func TestChunkDrainTrickle(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusOK}
		r, c, br, resp, action := earlyAnswered(t, o, bumped)
		io.ReadAll(resp.Body)
		defer trickle(c, "1\r\nq\r\n")()
		awaitNotRead(t, r, action, http.StatusOK, "not ended 2s after the response", 4*time.Second)
		expectClosed(t, c, br, time.Second)
	})
}

// TestChunkDrainTooMuch: after the origin's early answer, the client
// sends more than 256 KiB of body with no end, which the origin does not
// read either (one that reads it takes it as the transport's writer
// relays it, and the drain's time bound ends the wait). The drain stops there: the
// record comes at once, result ok with the note, and the connection
// closes. Before, all of it was read, however much, before the record.
// Cleartext and bumped.
func TestChunkDrainTooMuch(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusOK, stall: true}
		r, c, br, resp, action := earlyAnswered(t, o, bumped)
		io.ReadAll(resp.Body)
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 16<<10, strings.Repeat("z", 16<<10))
		go func() {
			for range 64 { // 1 MiB
				if _, err := io.WriteString(c, chunk); err != nil {
					return
				}
			}
			// and then nothing: the body goes on
		}()
		awaitNotRead(t, r, action, http.StatusOK, "more than 256 KiB after the response", time.Second) // well within the drain's 2 s
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.Copy(io.Discard, br); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Errorf("after the answer: %v, want the connection closed", err)
		}
	})
}

// TestChunkEarlyChunkedAnswer: the origin answers a chunked upload at once
// with a chunked 413; the client, as curl does, stops its upload on an
// error answer and waits for the answer's end. It must get it at once,
// not after the drain of its body gives up: net/http writes a chunked
// answer's last CRLF only after closing the response body, which reads
// the rest of the request body. Then the record (413 ok, the rest of the
// body not read) and the connection's end. Before, the client never got
// the CRLF, and the record, written when it gave up and closed, blamed
// it: "the client went away before its request body ended". Cleartext
// and bumped.
func TestChunkEarlyChunkedAnswer(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge, chunkedAnswer: true}
		r, c, br, resp, action := earlyAnswered(t, o, bumped)
		c.SetReadDeadline(time.Now().Add(time.Second)) // half the drain's bound
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "large" {
			t.Fatalf("answer's body %q, %v: want all of it, at once", b, err)
		}
		awaitNotRead(t, r, action, http.StatusRequestEntityTooLarge, "not ended 2s after the response", 4*time.Second)
		expectClosed(t, c, br, time.Second)
	})
}

// TestChunkEarlyAnswerKeepSending: a client that sends its whole body
// after an early 413, within the drain's bounds, keeps its connection:
// its next request is served, and the 413's record is ok. Cleartext and
// bumped.
func TestChunkEarlyAnswerKeepSending(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
		r, c, br, resp, _ := earlyAnswered(t, o, bumped)
		io.ReadAll(resp.Body)
		for range 5 {
			io.WriteString(c, "400\r\n"+strings.Repeat("z", 0x400)+"\r\n")
			time.Sleep(20 * time.Millisecond)
		}
		io.WriteString(c, "0\r\nX-T: v\r\n\r\nGET /b HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
		resp2, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer to the second request: %v", err)
		}
		io.ReadAll(resp2.Body)
		c.Close()
		rec := awaitRecord(t, r, "/a", time.Second)
		if rec == nil || rec.Status != http.StatusRequestEntityTooLarge || rec.Result != "ok" || rec.Error != "" {
			t.Errorf("record of POST /a %+v, want 413 ok", rec)
		}
		if rec := awaitRecord(t, r, "/b", time.Second); rec == nil {
			t.Error("no record of GET /b")
		}
	})
}
