package intercept_test

import (
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestH2ReloadResetBytesIn: a reload that denies a request whose answer
// is under way resets its HTTP/2 stream; the record's bytes_in is what
// the client got before the reset, for an answer of a known length (whose
// pieces x/net's server may hold unsent) and a chunked one alike, and its
// status the one the client saw: none when the head never went.
func TestH2ReloadResetBytesIn(t *testing.T) {
	for _, tc := range []struct {
		name, answer, more string
		head               bool // the head went before the reload
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst", "again", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n", "5\r\nagain\r\n", true},
		{"chunked-head-only", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "5\r\nagain\r\n", false},
	} {
		for _, via := range []string{"upload", "download"} {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				var holder policy.Holder
				r := newRig(t, testPolicy, func(c *intercept.Config) { c.Policy = &holder })
				holder.Store(r.pol)
				reading := make(chan struct{})
				var once sync.Once
				defer intercept.OnBodyRead(func() { once.Do(func() { close(reading) }) })()
				proxyEnd, originEnd := testnet.TCPPair(t)
				startKeptOrigin(t, originEnd, piece(0), tc.answer)
				c, sv := r.connectTCP(proxyEnd, httpDest)
				c.SetDeadline(time.Now().Add(2 * waitLimit))
				cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
				if err != nil {
					t.Fatal(err)
				}
				pr, pw := io.Pipe()
				defer pw.Close()
				req, _ := http.NewRequest("POST", "http://www.example.test/duplex", pr)
				go pw.Write([]byte(piece(0)))
				type result struct {
					body []byte
					err  error
				}
				// first: the head and the first 5 bytes came (if the
				// head is to come before the reload).
				first := make(chan error, 1)
				got := make(chan result, 1)
				go func() {
					resp, err := cc.RoundTrip(req)
					if err != nil {
						first <- err
						got <- result{nil, err}
						return
					}
					var b []byte
					if tc.head {
						b = make([]byte, 5)
						_, err := io.ReadFull(resp.Body, b)
						first <- err
					}
					rest, err := io.ReadAll(resp.Body)
					got <- result{append(b, rest...), err}
				}()
				if tc.head {
					select {
					case err := <-first:
						if err != nil {
							t.Fatalf("the head and the first bytes: %v", err)
						}
					case <-time.After(waitLimit):
						t.Fatal("no response head and first bytes before the reload")
					}
				} else {
					// The client sees nothing: the head is held until the
					// body's first piece, which the appliance waits for.
					select {
					case <-reading:
					case <-time.After(waitLimit):
						t.Fatal("the response body was never read")
					}
				}
				reloadTo(t, &holder, tightenedPolicy)
				if via == "upload" {
					go pw.Write([]byte(piece(1)))
				} else {
					io.WriteString(originEnd, tc.more)
				}
				var res result
				select {
				case res = <-got:
				case <-time.After(waitLimit):
					t.Fatal("the stream did not end")
				}
				if res.err == nil {
					t.Fatalf("the stream ended cleanly after %q: no reset", res.body)
				}
				clientGot := len(res.body)
				pw.Close()
				c.Close()
				sv.waitDoneOnce(t)
				rec := wwwRecord(t, r)
				t.Logf("client got %d bytes (%v); record status %d bytes_in %d result %s error %q", clientGot, res.err, rec.Status, rec.BytesIn, rec.Result, rec.Error)
				if rec.Result != "denied" {
					t.Errorf("result %q, want denied", rec.Result)
				}
				if rec.BytesIn != int64(clientGot) {
					t.Errorf("bytes_in %d, but the client got %d bytes", rec.BytesIn, clientGot)
				}
				wantStatus := 0
				if tc.head {
					wantStatus = 200
				}
				if rec.Status != wantStatus {
					t.Errorf("status %d, want %d", rec.Status, wantStatus)
				}
			})
		}
	}
}
