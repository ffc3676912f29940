package intercept_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestReloadEndedH2StreamCountsWhatClientHad: an HTTP/2 stream whose
// client had read the response's first 5 bytes when a reload ended it
// (found by the upload's next bytes, or by the download's) was recorded
// with bytes_in 0: the reset left the last piece written counted as one
// the client never got. records.md says bytes_in counts what was relayed
// before the reload: 5.
func TestReloadEndedH2StreamCountsWhatClientHad(t *testing.T) {
	for _, via := range []string{"upload", "download"} {
		t.Run(via, func(t *testing.T) {
			var holder policy.Holder
			r := newRig(t, testPolicy, func(c *intercept.Config) { c.Policy = &holder })
			holder.Store(r.pol)
			proxyEnd, originEnd := testnet.TCPPair(t)
			startKeptOrigin(t, originEnd, piece(0), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
			if err != nil {
				t.Fatal(err)
			}
			pr, pw := io.Pipe()
			defer pw.Close()
			req, _ := http.NewRequest("POST", "http://www.example.test/duplex", pr)
			go pw.Write([]byte(piece(0)))
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 5)); err != nil {
				t.Fatalf("the response's first bytes: %v", err)
			}
			after := reloadTo(t, &holder, tightenedPolicy)
			if via == "upload" {
				go pw.Write([]byte(piece(1))) // unblocked by pw.Close at the latest
			} else {
				io.WriteString(originEnd, "5\r\nagain\r\n")
			}
			if rest, err := io.ReadAll(resp.Body); err == nil || len(rest) != 0 {
				t.Errorf("after the reload the client got %q, %v; want the stream reset", rest, err)
			}
			pw.Close()
			c.Close()
			sv.waitDoneOnce(t)
			rec := wwwRecord(t, r)
			checkReloadDenied(t, rec, after, int64(len(piece(0))))
			if rec.BytesIn != 5 {
				t.Errorf("bytes_in %d, but the client had read 5 bytes of the response before the reload", rec.BytesIn)
			}
		})
	}
}
