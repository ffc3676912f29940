package intercept

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2RapidResetProvokedAgreesWithServer: each frame the reset count
// takes as drawing x/net's reset of a stream (provokedCases) does draw it
// from x/net's server, and each it takes as not drawing one does not, so
// that a reset counted as the frame comes in is one x/net makes (review
// r4s26 F2). The handler reads the body and holds the stream unanswered,
// as a client that stopped reading has it; a PING after the frames marks
// the end of what x/net answers them with.
func TestH2RapidResetProvokedAgreesWithServer(t *testing.T) {
	cases, getBlock := provokedCases()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			defer close(release)
			cc, sc := net.Pipe()
			defer cc.Close()
			srv := &http2.Server{}
			go srv.ServeConn(sc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				<-release
			})})
			type answer struct {
				rst  http2.ErrCode
				ping bool
				err  error
			}
			got := make(chan answer, 16)
			go func() {
				fr := http2.NewFramer(nil, cc)
				for {
					f, err := fr.ReadFrame()
					switch f := f.(type) {
					case *http2.RSTStreamFrame:
						got <- answer{rst: f.ErrCode}
					case *http2.PingFrame:
						got <- answer{ping: true}
					case *http2.GoAwayFrame:
						got <- answer{err: io.ErrUnexpectedEOF}
					}
					if err != nil {
						got <- answer{err: err}
						return
					}
				}
			}()
			var buf bytes.Buffer
			buf.WriteString(http2.ClientPreface)
			fr := http2.NewFramer(&buf, nil)
			fr.WriteSettings()
			req := tc.req
			if req == nil {
				req = getBlock
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: req, EndHeaders: true, EndStream: tc.end})
			buf.Write(tc.frames)
			fr.WritePing(false, [8]byte{7})
			go cc.Write(buf.Bytes())
			var resets []http2.ErrCode
			for done := false; !done; {
				select {
				case a := <-got:
					if a.err != nil {
						t.Fatalf("x/net ended the connection: %v", a.err)
					}
					if a.ping {
						done = true
					} else {
						resets = append(resets, a.rst)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("no PING answered")
				}
			}
			t.Logf("resets %v", resets)
			if drawn := len(resets) > 0; drawn != tc.drawn {
				t.Fatalf("x/net reset the stream: %v (%v), the count takes it as %v", drawn, resets, tc.drawn)
			}
			for _, code := range resets {
				if code != http2.ErrCodeProtocol && code != http2.ErrCodeStreamClosed {
					t.Fatalf("x/net reset the stream with %v", code)
				}
			}
		})
	}
}
