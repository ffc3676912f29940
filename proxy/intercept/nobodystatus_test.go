package intercept_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestH2Origin204WithDataNeverReachesH1Client: an HTTP/2 origin answers a
// bumped HTTP/1.1 client's request 204 or 304 and sends DATA all the same
// (x/net's client hands it to the body, whatever the status). A 204 or 304
// has no body (RFC 9110 15.3.5, 15.4.5): nothing of it may reach the
// client, or the origin writes the client's next answer, that of a request
// the policy denied included. The client's second request gets the
// origin's own answer to it (or the deny), and the 204/304's record counts
// no body.
func TestH2Origin204WithDataNeverReachesH1Client(t *testing.T) {
	for _, status := range []string{"204", "304"} {
		for _, length := range []string{"", "5"} {
			for _, host := range []string{"www.example.test", "evil.example.test"} {
				t.Run(status+"/length="+length+"/"+host, func(t *testing.T) {
					r := newRig(t, testPolicy)
					proxyEnd, serverEnd := testnet.TCPPair(t)
					t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
					inject := "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
					if length != "" {
						inject = "EVIL!"
					}
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
							var hb bytes.Buffer
							enc := hpack.NewEncoder(&hb)
							if f.StreamID == 1 {
								enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
								if length != "" {
									enc.WriteField(hpack.HeaderField{Name: "content-length", Value: length})
								}
								fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
								fr.WriteData(1, true, []byte(inject))
								return true
							}
							body := "real:" + path
							enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
							enc.WriteField(hpack.HeaderField{Name: "content-length", Value: fmt.Sprint(len(body))})
							fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
							fr.WriteData(f.StreamID, true, []byte(body))
							return true
						})
					}()
					c, _ := r.connectTCP(proxyEnd, tlsDest)
					// A client that would take h2 but prefers http/1.1:
					// the origin is offered both and picks h2.
					tlsc := bumpClient(t, r, c, "www.example.test", "http/1.1", "h2")
					defer tlsc.Close()
					if p := tlsc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
						t.Fatalf("client ALPN %q, want http/1.1", p)
					}
					tlsc.SetDeadline(time.Now().Add(waitLimit))
					br := bufio.NewReader(tlsc)
					io.WriteString(tlsc, "GET /a HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
					first, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("first answer: %v", err)
					}
					io.Copy(io.Discard, first.Body)
					io.WriteString(tlsc, "GET /b HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
					second, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("second answer: %v (the %s's DATA came before it)", err, status)
					}
					got, _ := io.ReadAll(second.Body)
					want, wantStatus := "real:/b", http.StatusOK
					if host == "evil.example.test" {
						wantStatus = http.StatusForbidden
					}
					if second.StatusCode != wantStatus || (wantStatus == http.StatusOK && string(got) != want) {
						t.Errorf("the answer to GET /b is %s %q, want %d (%q): the %s's DATA was written as the next answer", second.Status, got, wantStatus, want, status)
					}
					rec := awaitRecord(t, r, "/a", waitLimit)
					if rec == nil || rec.BytesIn != 0 {
						t.Errorf("the %s's record %+v, want bytes_in 0", status, rec)
					}
				})
			}
		}
	}
}
