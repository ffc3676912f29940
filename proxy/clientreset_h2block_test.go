package proxy

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestBumpedH2HeaderBlockBegunThenResetTLSRecord: an HTTP/2 client opens
// a stream with a HEADERS frame whose header block is unfinished (no
// END_HEADERS: CONTINUATION to come), the server having read it, and
// resets. The HEADERS frame opened the stream (RFC 9113 §5.1), as an
// HTTP/1 head begun is a request under way: the tls record says reset.
func TestBumpedH2HeaderBlockBegunThenResetTLSRecord(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}, "h2")
	bad := 0
	for i := range resetAfterResponsesConns {
		rc, tc := r.dialRawTLS(t, "h2")
		var pre bytes.Buffer
		pre.WriteString(http2.ClientPreface)
		http2.NewFramer(&pre, nil).WriteSettings()
		if _, err := tc.Write(pre.Bytes()); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		// Up to the server's ack of the client's SETTINGS: the server has
		// nothing more to write, and no write of its own takes the reset
		// (x/net then closes the connection, the header block unread).
		for fr := http2.NewFramer(io.Discard, tc); ; {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			if sf, ok := f.(*http2.SettingsFrame); ok && sf.IsAck() {
				break
			}
		}
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
			{Name: ":authority", Value: "big.example"}} {
			enc.WriteField(f)
		}
		var hf bytes.Buffer
		http2.NewFramer(&hf, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true})
		if !sendThenResetRecordsReset(t, r, rc, i, func() error {
			_, err := tc.Write(hf.Bytes())
			return err
		}) {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d connections reset with an HTTP/2 header block begun: the tls record is not reset", bad, resetAfterResponsesConns)
	}
}
