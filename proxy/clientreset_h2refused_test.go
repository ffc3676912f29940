package proxy

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestBumpedH2RefusedStreamThenResetTLSRecord: an HTTP/2 client has a
// stream refused by the server (an upper-case field name: x/net resets
// the stream, RST_STREAM, and starts no handler), makes an ordinary
// request, reads its whole response, and resets its bumped connection
// with nothing under way, as curl --http2 closes. The client lost
// nothing: its tls record says ok. The session counted the refused stream
// as one yet to reach RoundTrip for good, and the record said reset.
func TestBumpedH2RefusedStreamThenResetTLSRecord(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}, "h2")
	for i := range resetAfterResponsesConns {
		rc, tc := r.dialRawTLS(t, "h2")
		var buf bytes.Buffer
		buf.WriteString(http2.ClientPreface)
		fr := http2.NewFramer(&buf, nil)
		_ = fr.WriteSettings()
		// Stream 1, refused; stream 3, an ordinary GET.
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndStream: true, EndHeaders: true,
			BlockFragment: getHeaderBlock(hpack.HeaderField{Name: "X-Upper", Value: "1"})})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndStream: true, EndHeaders: true,
			BlockFragment: getHeaderBlock()})
		if _, err := tc.Write(buf.Bytes()); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		readUntilAnswered(t, tc, i)
		port := uint16(rc.LocalAddr().(*net.TCPAddr).Port)
		waitUntil(t, 10*time.Second, func() bool {
			for _, rec := range r.sink.parse(t) {
				if rec.Kind == "http" && rec.ClientPort == port {
					return true
				}
			}
			return false
		}, "stream 3's record")
		rc.reset()
	}
	expectTLSRecordsOK(t, r)
}

// getHeaderBlock is the header block of a GET of https://big.example/x,
// with extra fields, each encoded on its own (no dynamic table).
func getHeaderBlock(extra ...hpack.HeaderField) []byte {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.SetMaxDynamicTableSizeLimit(0)
	for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "big.example"}, {Name: ":path", Value: "/x"}}, extra...) {
		_ = enc.WriteField(f)
	}
	return hb.Bytes()
}

// readUntilAnswered reads the server's frames on c, connection i, until
// stream 1 was reset and stream 3 ended.
func readUntilAnswered(t *testing.T, c net.Conn, i int) {
	t.Helper()
	rfr := http2.NewFramer(io.Discard, c)
	var done3, rst1 bool
	for !done3 || !rst1 {
		f, err := rfr.ReadFrame()
		if err != nil {
			t.Fatalf("connection %d: reading frames: %v (stream 3 ended %v, stream 1 reset %v)", i, err, done3, rst1)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			rst1 = rst1 || f.StreamID == 1
		case *http2.DataFrame:
			done3 = done3 || f.StreamID == 3 && f.StreamEnded()
		case *http2.HeadersFrame:
			done3 = done3 || f.StreamID == 3 && f.StreamEnded()
		}
	}
}
