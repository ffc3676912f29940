package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
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
					inject := "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
					if length != "" {
						inject = "EVIL!"
					}
					proxyEnd := startH2TLSOrigin(t, r, func(fr *http2.Framer, id uint32, path string) {
						if id == 1 {
							fields := []hpack.HeaderField{{Name: ":status", Value: status}}
							if length != "" {
								fields = append(fields, hpack.HeaderField{Name: "content-length", Value: length})
							}
							writeH2Answer(fr, 1, []byte(inject), fields...)
							return
						}
						body := "real:" + path
						writeH2Answer(fr, id, []byte(body), hpack.HeaderField{Name: ":status", Value: "200"},
							hpack.HeaderField{Name: "content-length", Value: fmt.Sprint(len(body))})
					})
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
