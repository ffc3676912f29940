package intercept_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// An HTTP/2 client that knows a body's length may close its connection as
// soon as it has the last byte, before the server's END_STREAM (which goes
// out only once the handler has returned, after the record): curl does,
// with many transfers on a connection. Such a download was recorded as the
// client's going away "before the response ended" (review rev32a F4). The
// record must say ok when every byte of the body went out in the stream's
// DATA frames, and still say error for a client that closed with part of
// the body never sent (a stream window of 100 bytes for 1,000).
func TestH2ClientCloseAfterWholeBody(t *testing.T) {
	const size = 1000
	for _, tc := range []struct {
		name   string
		window uint32 // the client's initial stream window; 0: the default
		want   string
	}{
		{"whole body then close", 0, "ok"},
		{"part of the body then close", 100, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The handler's Close (the record) waits until the client's
			// connection has closed: the client's close comes first, as
			// it does now and then over a network.
			closing := make(chan struct{}, 1)
			defer intercept.OnH2BodyClose(func(connClosed func() bool) {
				closing <- struct{}{}
				waitFor(t, "the client's connection's close", waitLimit, connClosed)
			})()
			r := newRig(t, testPolicy)
			upEnd, serverEnd := testnet.TCPPair(t)
			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
					w.Header().Set("Content-Length", fmt.Sprint(size))
					w.Write([]byte(strings.Repeat("b", size)))
				}),
				ErrorLog: log.New(io.Discard, "", 0),
			}
			go srv.Serve(newOneConnListener(tls.Server(serverEnd, &tls.Config{
				Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2", "http/1.1"},
			})))
			t.Cleanup(func() { srv.Close(); serverEnd.Close() })
			raw, _ := r.connectTCP(upEnd, tlsDest)
			c := bumpClient(t, r, raw, "www.example.test", "h2")
			c.SetDeadline(time.Now().Add(2 * waitLimit))
			c.Write([]byte(http2.ClientPreface))
			fr := http2.NewFramer(c, c)
			var settings []http2.Setting
			if tc.window > 0 {
				settings = append(settings, http2.Setting{ID: http2.SettingInitialWindowSize, Val: tc.window})
			}
			if err := fr.WriteSettings(settings...); err != nil {
				t.Fatal(err)
			}
			if err := h2Request(fr, 1, "https", "/download"); err != nil {
				t.Fatal(err)
			}
			want := size
			if tc.window > 0 {
				want = int(tc.window)
			}
			got := 0
			for got < want {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("after %d body bytes: %v", got, err)
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						fr.WriteSettingsAck()
					}
				case *http2.DataFrame:
					if f.StreamID == 1 {
						got += len(f.Data())
					}
				case *http2.RSTStreamFrame, *http2.GoAwayFrame:
					t.Fatalf("after %d body bytes: %v", got, f)
				}
			}
			if tc.window == 0 {
				// The body's Close waits (it writes the record): nothing
				// but the client's close can end the stream now. (With
				// the small window the handler waits to write the rest.)
				select {
				case <-closing:
				case <-time.After(waitLimit):
					t.Fatal("the handler did not reach the body's Close after the whole body went out")
				}
			}
			c.Close()
			var recs []records.Record
			waitFor(t, "the request's record", waitLimit, func() bool {
				recs = ofKind(r.records(), "http")
				return len(recs) > 0
			})
			if len(recs) != 1 {
				t.Fatalf("http records %+v, want the request's", recs)
			}
			rec := recs[0]
			if rec.Result != tc.want || rec.Status != 200 {
				t.Fatalf("record %s %d %q (bytes_in %d); want %s 200", rec.Result, rec.Status, rec.Error, rec.BytesIn, tc.want)
			}
			if tc.want == "ok" && (rec.BytesIn != size || rec.Error != "") {
				t.Fatalf("record %+v: want bytes_in %d and no error", rec, size)
			}
			if tc.want == "error" && !strings.Contains(rec.Error, "the client went away before the response ended") {
				t.Fatalf("record error %q: want the client's going away", rec.Error)
			}
		})
	}
}
