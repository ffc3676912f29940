package intercept_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestH2Client204WithDataRecordsNoBody: an HTTP/2 origin answers a bumped
// HTTP/2 client 204 and 304 and sends DATA on each all the same. The
// client gets each as a head alone (the HTTP/2 server refuses a body for
// them), with the 304's ETag, and the connection serves the next stream;
// and each record's bytes_in is 0, since nothing of a body was relayed
// (records.md: bytes_in counts what was handed to the HTTP/2 server). It
// said 2 for the 204, bytes the client never got.
func TestH2Client204WithDataRecordsNoBody(t *testing.T) {
	r := newRig(t, testPolicy)
	proxyEnd := startH2TLSOrigin(t, r, func(fr *http2.Framer, id uint32, path string) {
		switch path {
		case "/204":
			writeH2Answer(fr, id, []byte("xx"), hpack.HeaderField{Name: ":status", Value: "204"})
		case "/304":
			writeH2Answer(fr, id, []byte("xx"), hpack.HeaderField{Name: ":status", Value: "304"}, hpack.HeaderField{Name: "etag", Value: `"v1"`})
		default:
			writeH2Answer(fr, id, []byte("ok"), hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-length", Value: "2"})
		}
	})
	c, _ := r.connectTCP(proxyEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	defer tlsc.Close()
	tlsc.SetDeadline(time.Now().Add(waitLimit))
	cc, err := (&http2.Transport{}).NewClientConn(tlsc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path       string
		status     int
		body, etag string
		bytesIn    int64
	}{
		{"/204", http.StatusNoContent, "", "", 0},
		{"/304", http.StatusNotModified, "", `"v1"`, 0},
		{"/ok", http.StatusOK, "ok", "", 2},
	} {
		req, _ := http.NewRequest(http.MethodGet, "https://www.example.test"+tc.path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || string(b) != tc.body || err != nil || resp.Header.Get("Etag") != tc.etag {
			t.Errorf("%s: %d %q (%v), ETag %q; want %d %q, ETag %q", tc.path, resp.StatusCode, b, err, resp.Header.Get("Etag"), tc.status, tc.body, tc.etag)
		}
		rec := awaitRecord(t, r, tc.path, waitLimit)
		if rec == nil {
			t.Fatalf("%s: no record", tc.path)
		}
		if rec.Status != tc.status || rec.Result != "ok" || rec.BytesIn != tc.bytesIn {
			t.Errorf("%s: record status %d, result %s (%q), bytes_in %d; want %d, ok, %d", tc.path, rec.Status, rec.Result, rec.Error, rec.BytesIn, tc.status, tc.bytesIn)
		}
	}
}

// startH2TLSOrigin starts an HTTP/2 origin over TLS (www.example.test's
// leaf from r) on one end of a TCP pair, answering each stream with
// answer(its ID, its :path); it returns the other end, the proxy's.
func startH2TLSOrigin(t *testing.T, r *rig, answer func(fr *http2.Framer, id uint32, path string)) net.Conn {
	t.Helper()
	proxyEnd, serverEnd := testnet.TCPPair(t)
	t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	tc := tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"}})
	go func() {
		if err := tc.Handshake(); err != nil {
			return
		}
		dec := hpack.NewDecoder(4096, nil)
		serveH2Frames(tc, func(fr *http2.Framer, f *http2.HeadersFrame) bool {
			fields, _ := dec.DecodeFull(f.HeaderBlockFragment())
			path := ""
			for _, hf := range fields {
				if hf.Name == ":path" {
					path = hf.Value
				}
			}
			answer(fr, f.StreamID, path)
			return true
		})
	}()
	return proxyEnd
}

// writeH2Answer writes a stream's answer: a header block of fields, then
// body in one DATA frame that ends the stream.
func writeH2Answer(fr *http2.Framer, id uint32, body []byte, fields ...hpack.HeaderField) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		enc.WriteField(f)
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(id, true, body)
}
