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
// DATA frames, and still say error, with the bytes that went out, for a
// client that closed with part of the body never sent (a stream window of
// 100 bytes for 1,000), for a body whose trailer had not gone out (review
// rev33c F1), and for a client that reset the stream before the body's last
// DATA was written (rev33c F2, F3: the 500 bytes after its reset do not
// count).
func TestH2ClientCloseAfterWholeBody(t *testing.T) {
	const size = 1000
	for _, tc := range []struct {
		name    string
		window  uint32 // the client's initial stream window; 0: the default
		trailer bool   // the origin announces and sends a trailer
		reset   bool   // the client grants the rest and resets the stream in one write
		// connErr: a connection error of the client's (a connection
		// WINDOW_UPDATE of 0) between the grant and the reset, which the
		// server then never takes; the client drops the rest all the same
		// (review rev33f F3).
		connErr bool
		want    string
		wantIn  int64
		words   string // the record's error, before " (N body bytes passed on)"
	}{
		{name: "whole body then close", want: "ok", wantIn: size},
		{name: "part of the body then close", window: 100, want: "error", wantIn: 100, words: "the client went away before the response ended"},
		{name: "whole body with a trailer then close", trailer: true, want: "error", wantIn: size, words: "the client went away before the response ended"},
		{name: "reset with the last window", window: 500, reset: true, want: "error", wantIn: 500, words: "the client went away before the response ended"},
		{name: "reset after a connection error", window: 500, reset: true, connErr: true, want: "error", wantIn: 500,
			words: "the appliance's HTTP/2 server closed the connection for the client's protocol error (GOAWAY PROTOCOL_ERROR) before the response ended"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The handler's Close (the record) waits until the stream's
			// context is done: the client's close or reset comes first,
			// as it does now and then over a network.
			closing := make(chan struct{}, 1)
			release := make(chan struct{}) // closed once the client has what it waits for
			defer intercept.OnH2BodyClose(func(streamDone func() bool) {
				closing <- struct{}{}
				waitFor(t, "the stream's end", waitLimit, streamDone)
				select {
				case <-release:
				case <-time.After(waitLimit):
				}
			})()
			r := newRig(t, testPolicy)
			upEnd, serverEnd := testnet.TCPPair(t)
			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
					w.Header().Set("Content-Length", fmt.Sprint(size))
					if tc.trailer {
						w.Header().Set("Trailer", "X-Digest")
					}
					w.Write([]byte(strings.Repeat("b", size)))
					if tc.trailer {
						w.Header().Set("X-Digest", "abc")
					}
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
			if tc.reset {
				// The rest of the window and the stream's reset in one
				// write: the appliance reads the reset before its server
				// has taken the window and written the rest.
				var b strings.Builder
				both := http2.NewFramer(&b, nil)
				both.AllowIllegalWrites = true // the WINDOW_UPDATE of 0
				both.WriteWindowUpdate(1, size-tc.window)
				if tc.connErr {
					both.WriteWindowUpdate(0, 0)
				}
				both.WriteRSTStream(1, http2.ErrCodeCancel)
				if _, err := c.Write([]byte(b.String())); err != nil {
					t.Fatal(err)
				}
				// The server takes the window before the reset and most
				// often writes the rest, which the client drops (RFC 9113
				// 5.1), though it may drop it itself as it closes the
				// stream: the record waits until the rest has come, or a
				// second has passed.
				c.SetReadDeadline(time.Now().Add(time.Second))
				for after := 0; after < size-int(tc.window); {
					f, err := fr.ReadFrame()
					if err != nil {
						t.Logf("after the reset, %d body bytes: %v", after, err)
						break
					}
					if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 1 {
						after += len(d.Data())
					}
				}
			}
			close(release)
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
			if !tc.reset {
				c.Close()
			}
			var recs []records.Record
			waitFor(t, "the request's record", waitLimit, func() bool {
				recs = ofKind(r.records(), "http")
				return len(recs) > 0
			})
			if len(recs) != 1 {
				t.Fatalf("http records %+v, want the request's", recs)
			}
			rec := recs[0]
			if rec.Result != tc.want || rec.Status != 200 || rec.BytesIn != tc.wantIn {
				t.Fatalf("record %s %d %q (bytes_in %d); want %s 200, bytes_in %d", rec.Result, rec.Status, rec.Error, rec.BytesIn, tc.want, tc.wantIn)
			}
			if tc.want == "ok" && rec.Error != "" {
				t.Fatalf("record %+v: want no error", rec)
			}
			if tc.want == "error" && !strings.Contains(rec.Error, fmt.Sprintf("%s (%d body bytes passed on)", tc.words, tc.wantIn)) {
				t.Fatalf("record error %q: want %q, %d bytes passed on", rec.Error, tc.words, tc.wantIn)
			}
		})
	}
}
