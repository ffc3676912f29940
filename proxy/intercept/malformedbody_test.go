package intercept_test

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestMalformedH2BodyRecorded: an HTTP/2 request whose stream ends short
// of its content-length has its body refused by the appliance's own
// HTTP/2 server; its record says so ("malformed request body"), not that
// the client went away, and the client gets a 400. The record keeps the
// request's decision, and is written even while the client's bucket of
// deny records is dry (the rig's refuses every one): the policy allowed
// the request and its head went upstream, so a deny record with no rule
// said the opposite, and drawing on that bucket let a client that kept it
// dry send such requests unrecorded. (DATA beyond the
// content-length is not checked: the server's reset of the stream races
// the transport's read of the body's error, refuseMalformedBody.)
func TestMalformedH2BodyRecorded(t *testing.T) {
	for _, tc := range []struct {
		name, cl string
		data     []string
	}{
		{"content-length 10, 5 bytes", "10", []string{"hello"}},
		{"content-length 10, 5 bytes in two frames", "10", []string{"he", "llo"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy, func(c *intercept.Config) {
				c.DenyRecord = func(*records.Record) (bool, int) { return false, 0 }
			})
			o := &laxOrigin{t: t}
			c, _ := r.connectTCP(o.conn(), httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			out := h2cStart()
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			for _, f := range []hpack.HeaderField{
				{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/a"},
				{Name: ":authority", Value: "www.example.test"}, {Name: "content-length", Value: tc.cl},
			} {
				enc.WriteField(f)
			}
			fr := http2.NewFramer(out, nil)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
			for i, d := range tc.data {
				fr.WriteData(1, i == len(tc.data)-1, []byte(d))
			}
			c.Write(out.Bytes())
			rf := http2.NewFramer(io.Discard, c)
			rf.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			got := ""
		read:
			for {
				f, err := rf.ReadFrame()
				if err != nil {
					t.Fatalf("reading: %v", err)
				}
				switch f := f.(type) {
				case *http2.MetaHeadersFrame:
					if f.StreamID == 1 {
						got = "status " + f.PseudoValue("status")
						if f.StreamEnded() {
							break read
						}
					}
				case *http2.DataFrame:
					if f.StreamID == 1 && f.StreamEnded() {
						break read
					}
				case *http2.RSTStreamFrame:
					got += " RST_STREAM " + f.ErrCode.String()
					break read
				}
			}
			if got != "status 400" {
				t.Errorf("client: %s, want status 400", got)
			}
			time.Sleep(200 * time.Millisecond) // the handler runs on after a reset
			c.Close()
			var found bool
			for _, rec := range ofKind(r.records(), "http") {
				if rec.Path != "/a" {
					continue
				}
				found = true
				if rec.Action != "allow" || rec.Rule != "default" || rec.Status != 400 || rec.Result != "error" ||
					!strings.HasPrefix(rec.Error, "malformed request body: ") {
					t.Errorf("record: action %s rule %q status %d result %s error %q, want the decision (allow, default: cleartext is not bumped), 400, error, malformed request body",
						rec.Action, rec.Rule, rec.Status, rec.Result, rec.Error)
				}
			}
			if !found {
				t.Errorf("no record for POST /a")
			}
		})
	}
}

// TestMalformedH1ChunkedBody: an HTTP/1 client's chunked body with a
// chunk length net/http cannot read, followed by what would be a second
// request, sent at once to an origin that answers from the head (the lax
// origin reads no chunked body): the appliance may find the bad chunk
// before the origin's answer comes (the client gets a 400) or after it
// went out (the client keeps the origin's 200). Either way the body's
// framing is lost, so what follows is no request: the connection closes
// after that one response, the record keeps the request's decision with
// the status the client got and the body's fault, and nothing after the
// bad chunk is served. Before, the record blamed a client that was still
// there ("the client went away", 502), the connection stayed open, and
// the bytes after the chunk were read and served as a request; then, when
// the answer won the race, they still were (TestChunkFaultAfterAnswer
// has that order every time, TestChunkFaultBeforeAnswer the other).
func TestMalformedH1ChunkedBody(t *testing.T) {
	r := newRig(t, testPolicy)
	o := &laxOrigin{t: t}
	c, _ := r.connectTCP(o.conn(), httpDest)
	r.offerRedial(o.conn())
	c.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(c, chunkedHead+"3\r\nabc\r\n"+badChunk)
	checkChunkFault(t, r, func() []string { _, served := o.snapshot(); return served }, c, bufio.NewReader(c), 0, "allow", chunkFault)
}
