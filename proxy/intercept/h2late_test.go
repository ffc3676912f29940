package intercept_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2cRequestAndClose is what an h2c client sends that writes one request
// and closes at once: the preface, SETTINGS and one HEADERS frame ending
// its stream, with the given header fields.
func h2cRequestAndClose(fields ...hpack.HeaderField) []byte {
	var buf, block bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	_ = fr.WriteSettings()
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		_ = enc.WriteField(f)
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
	return buf.Bytes()
}

// An HTTP/2 client (h2c, or h2 in a bumped connection) that sends a whole
// request and closes at once: the HTTP/2 server starts the stream's
// handler and closes the connection, and the handler may reach RoundTrip
// only after that. The session must wait for it: the request's record is
// written before Done (and a bumped connection's before its tls record),
// and says the request was not sent because the client had gone, that its
// response did not reach the client (relayed, the stream ended first), or that
// it was relayed; never a "malformed request" deny for a request that was
// read, nor a record after Done (a drain waits for Done, and would lose
// it).
func TestH2RequestThenCloseRecordedBeforeDone(t *testing.T) {
	// One P makes the handler start after the close far more often.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2c", true: "bumped h2"}[bumped], func(t *testing.T) {
			for i := range 20 {
				h2RequestThenClose(t, i, bumped)
			}
		})
	}
}

func h2RequestThenClose(t *testing.T, i int, bumped bool) {
	r := newRig(t, testPolicy)
	scheme, dest, status := "http", httpDest, 200
	var cert *tls.Certificate
	if bumped {
		scheme, dest, cert = "https", tlsDest, r.upLeaf("www.example.test")
	}
	upEnd, up := r.startUpstream(cert, "h2", "http/1.1")
	raw, sv := r.connectTCP(upEnd, dest)
	var c interface {
		io.ReadWriter
		CloseWrite() error
	} = raw
	if bumped {
		tc := bumpClient(t, r, raw, "www.example.test", "h2")
		go io.Copy(io.Discard, tc) // what the server writes, unread, must not hold it up
		c = tc
	}
	if _, err := c.Write(h2cRequestAndClose(
		hpack.HeaderField{Name: ":method", Value: "GET"}, hpack.HeaderField{Name: ":scheme", Value: scheme},
		hpack.HeaderField{Name: ":authority", Value: "www.example.test"}, hpack.HeaderField{Name: ":path", Value: "/x"},
	)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	select {
	case <-sv.done:
	case <-time.After(waitLimit):
		t.Fatal("Done not called")
	}
	recs := r.records()
	atDone := ofKind(recs, "http")
	if len(atDone) != 1 {
		t.Fatalf("iteration %d: %d http records at Done, want the request's: %+v", i, len(atDone), atDone)
	}
	if bumped && (len(recs) != 2 || recs[1].Kind != "tls") {
		t.Fatalf("iteration %d: records %+v, want the request's, then the connection's", i, recs)
	}
	rec := atDone[0]
	if rec.Action == "deny" || rec.Host != "www.example.test" || rec.Path != "/x" {
		t.Fatalf("iteration %d: the record at Done is not the request's: %+v", i, rec)
	}
	// The client is gone by the time the request is decided, or not: the
	// scheduler says which. Either way the record says what happened.
	switch got := up.requests(); rec.Result {
	case "reset":
		// Not sent, or cut short on its way: no response came.
		notSent := strings.Contains(rec.Error, "not sent")
		if rec.Status != 0 || notSent && len(got) != 0 ||
			!notSent && !strings.Contains(rec.Error, "the client went away before the response came") {
			t.Fatalf("iteration %d: a request the client left recorded as %+v, the upstream served %q", i, rec, got)
		}
	case "ok": // relayed before the stream was cancelled
		if rec.Status != status || len(got) != 1 {
			t.Fatalf("iteration %d: a request relayed recorded as %+v, the upstream served %q", i, rec, got)
		}
	case "error": // relayed, and the stream cancelled before its end went out
		if rec.Status != status || len(got) != 1 || !strings.Contains(rec.Error, "the client went away before the response ended") {
			t.Fatalf("iteration %d: a response the client left recorded as %+v, the upstream served %q", i, rec, got)
		}
	default:
		t.Fatalf("iteration %d: record %+v: neither not sent nor relayed", i, rec)
	}
	time.Sleep(20 * time.Millisecond) // time for a stray late record
	if n := len(ofKind(r.records(), "http")); n != 1 {
		t.Fatalf("iteration %d: %d http records in all, want 1: one came after Done", i, n)
	}
}

// A stream the HTTP/2 server refuses (no :path) never reaches a handler:
// the session still ends, after its wait for the handler runs out, with
// the record of a request that could not be read.
func TestH2RefusedStreamThenCloseEnds(t *testing.T) {
	r := newRig(t, testPolicy)
	upEnd, _ := r.startUpstream(nil)
	c, sv := r.connectTCP(upEnd, httpDest)
	if _, err := c.Write(h2cRequestAndClose(
		hpack.HeaderField{Name: ":method", Value: "GET"}, hpack.HeaderField{Name: ":scheme", Value: "http"},
		hpack.HeaderField{Name: ":authority", Value: "www.example.test"},
	)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	sv.waitDoneOnce(t)
	recs := ofKind(r.records(), "http")
	if len(recs) != 1 || recs[0].Action != "deny" || !strings.Contains(recs[0].Error, "no request could be read") {
		t.Fatalf("http records %+v, want one deny for a request that could not be read", recs)
	}
}
