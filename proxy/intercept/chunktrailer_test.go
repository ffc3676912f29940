package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// badTrailers end a chunked body with a trailer net/http refuses, and a
// request behind it: a line that is no header field, and a trailer that
// is a request head padded past the 4 KiB net/http looks ahead for its
// end (it refuses it unread, so the whole head is left buffered).
var badTrailers = []struct{ name, tail, fault string }{
	{"badline", "0\r\nbad line\r\n" + smuggledHead, `malformed MIME header: missing colon: "bad line"`},
	{"longtrailer", "0\r\nGET /smuggled HTTP/1.1\r\nHost: www.example.test\r\nX-Pad: " + strings.Repeat("p", 4200) + "\r\n\r\n",
		"http: suspiciously long trailer after chunked body"},
}

// TestChunkTrailerFault: a chunked body whose last chunk is followed by a
// trailer net/http refuses breaks its framing as a bad chunk does, in
// cleartext and bumped: with an origin that answers from the head (the
// client reads that answer, then sends the trailer and a request), the
// client keeps the answer and the connection ends; with one that reads
// the body first, the client gets a 400 and the connection ends. Either
// way the record says "malformed request body: ..." and nothing after
// the trailer is served. Before, the trailer's errors were not among the
// words that marked a fault: the request behind the trailer was decided,
// sent to the origin and recorded ok, and the first request's record said
// ok, or that its client went away (a 502, the connection left open).
func TestChunkTrailerFault(t *testing.T) {
	for _, bt := range badTrailers {
		for _, bumped := range []bool{false, true} {
			for _, readFirst := range []bool{false, true} {
				name := fmt.Sprintf("%s/bumped=%v/readfirst=%v", bt.name, bumped, readFirst)
				t.Run(name, func(t *testing.T) {
					r := newRig(t, testPolicy)
					o := &earlyOrigin{t: t, status: http.StatusOK, readFirst: readFirst}
					c, action := chunkClient(t, r, o, bumped)
					br := bufio.NewReader(c)
					if readFirst {
						io.WriteString(c, chunkedHead+"3\r\nabc\r\n"+bt.tail)
						checkChunkFault(t, r, o.served, c, br, http.StatusBadRequest, action, bt.fault)
						return
					}
					io.WriteString(c, chunkedHead+"3\r\nabc\r\n")
					resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
					if err != nil {
						t.Fatalf("no early answer: %v", err)
					}
					io.ReadAll(resp.Body)
					if resp.StatusCode != http.StatusOK {
						t.Fatalf("response %d, want the origin's 200", resp.StatusCode)
					}
					io.WriteString(c, bt.tail)
					checkChunkFaultAfter(t, r, o.served, c, br, http.StatusOK, action, bt.fault)
				})
			}
		}
	}
}

// TestChunkBodyCutAfterAnswer: the origin answers a chunked POST from its
// head with a whole 413 (Content-Length), and the client, having read the
// answer, stops its upload, as curl does, in the middle of a chunk, and
// closes its side. The rest of the body can no more be read than a bad
// chunk's: the connection ends. But the request had its whole answer:
// the record is ok, with a note that the client stopped its body after
// it (an error that is not net/http's for a malformed body is the
// client's, not the body's). Before, it said result reset, "the client
// went away before its request body ended". Cleartext and bumped.
func TestChunkBodyCutAfterAnswer(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusRequestEntityTooLarge}
		r, c, br, resp, action := earlyAnswered(t, o, bumped)
		io.ReadAll(resp.Body)
		io.WriteString(c, "5\r\nab")
		c.(interface{ CloseWrite() error }).CloseWrite()
		if next, err := http.ReadResponse(br, nil); err == nil {
			t.Errorf("a second response, %d", next.StatusCode)
		}
		c.Close()
		var found bool
		for _, rec := range ofKind(r.records(), "http") {
			if rec.Path != "/a" {
				t.Errorf("a record for %s", rec.Path)
				continue
			}
			found = true
			if want := "the client stopped sending its request body after the whole response ("; rec.Action != action ||
				rec.Status != http.StatusRequestEntityTooLarge || rec.Result != "ok" || !strings.HasPrefix(rec.Error, want) {
				t.Errorf("record: action %s status %d result %s error %q, want %s, 413, ok, %s...",
					rec.Action, rec.Status, rec.Result, rec.Error, action, want)
			}
		}
		if !found {
			t.Error("no record for POST /a")
		}
	})
}
