package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// readUntilFinal reads responses off br until a final one; it returns the
// statuses and the final body. onContinue runs at a 100.
func readUntilFinal(t *testing.T, br *bufio.Reader, onContinue func()) ([]int, string, error) {
	var got []int
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return got, "", err
		}
		got = append(got, resp.StatusCode)
		if resp.StatusCode == 100 {
			if onContinue != nil {
				onContinue()
				onContinue = nil
			}
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return got, string(b), nil
	}
}

// TestExpectOddSpellingFromH1ClientNotSmuggled: an HTTP/1 client spells its expectation so that
// goproxy (TrimSpace+EqualFold) sees one and expectsContinue (httpguts: SP
// and HTAB only) does not: the field is dropped, the body goes right behind
// the head, goproxy tells the client 100 at once. To laxOrigin{expect0}
// (answers an expectation at once and leaves the body, a request for a
// denied name, unread), the hidden request must never be served and GET /c
// must get /c. Both a waiting client and one that sends body and GET /c at once.
func TestExpectOddSpellingFromH1ClientNotSmuggled(t *testing.T) {
	t.Cleanup(intercept.SetExpectContinueTimeout(300 * time.Millisecond))
	spellings := []string{"100-continue\u00a0", "\u00a0100-continue", "100-continue\u0085", "100-continue\u2003", "100-continue\v", "100-continue\f", "100-Continue", "100-continue ,x", " 100-continue\t"}
	for _, v := range spellings {
		for _, eager := range []bool{false, true} {
			t.Run(strconv.Quote(v)+fmt.Sprint(eager), func(t *testing.T) {
				r := newRig(t, testPolicy)
				o := &laxOrigin{t: t, expect0: true, slowHost: "evil.example.test"}
				r.offerRedial(o.conn())
				r.offerRedial(o.conn())
				c, sv := r.connectTCP(o.conn(), httpDest)
				c.SetDeadline(time.Now().Add(waitLimit))
				head := fmt.Sprintf("POST /a HTTP/1.1\r\nHost: www.example.test\r\nExpect: %s\r\nContent-Length: %d\r\n\r\n", v, len(hiddenRequest))
				get := "GET /c HTTP/1.1\r\nHost: www.example.test\r\n\r\n"
				br := bufio.NewReader(c)
				var got []int
				var body string
				var err error
				start := time.Now()
				if eager {
					io.WriteString(c, head+hiddenRequest+get)
					got, body, err = readUntilFinal(t, br, nil)
				} else {
					io.WriteString(c, head)
					got, body, err = readUntilFinal(t, br, func() { io.WriteString(c, hiddenRequest) })
					if err == nil {
						io.WriteString(c, get)
					}
				}
				took := time.Since(start)
				_, cbody, cerr := readUntilFinal(t, br, nil)
				c.Close()
				sv.waitDoneOnce(t)
				raw, served := o.snapshot()
				fwd := strings.Contains(strings.ToLower(strings.Join(raw, "")), "expect:")
				t.Logf("POST: %v %q %v in %v; GET /c: %q %v; Expect forwarded %v; served %q", got, body, err, took, cbody, cerr, fwd, served)
				for _, s := range served {
					if strings.Contains(s, "evil") {
						t.Errorf("the origin served the hidden request: %q", s)
					}
				}
				if cerr == nil && !strings.Contains(cbody, "/c") {
					t.Errorf("GET /c got %q", cbody)
				}
				for _, rec := range ofKind(r.records(), "http") {
					t.Logf("record %s %s status %d bytes_out %d result %s error %q", rec.Method, rec.Path, rec.Status, rec.BytesOut, rec.Result, rec.Error)
				}
			})
		}
	}
}

// tlsLaxConn is laxOrigin.conn over TLS with cert, offering only http/1.1.
func tlsLaxConn(o *laxOrigin, cert *tls.Certificate) net.Conn {
	proxyEnd, serverEnd, n, buf := o.pair()
	go func() {
		tc := tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}})
		tc.SetDeadline(time.Now().Add(waitLimit))
		if err := tc.Handshake(); err != nil {
			serverEnd.Close()
			return
		}
		o.serve(n, tc, bufio.NewReader(io.TeeReader(tc, laxTee{o, buf})))
	}()
	return proxyEnd
}

// TestExpectNotForwardedThroughHTTPTransportToH1Origin: a bumped HTTP/1 client whose origin
// first negotiated h2 (the session's http.Transport); the first origin
// connection ends, the redial negotiates HTTP/1 with a laxOrigin{expect0}.
// A plain "Expect: 100-continue" POST with a hidden request as its body,
// then GET /c: Expect must not reach the HTTP/1 origin, the hidden request
// must not be served, /c must get /c.
func TestExpectNotForwardedThroughHTTPTransportToH1Origin(t *testing.T) {
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprint(eager), func(t *testing.T) {
			r := newRig(t, testPolicy)
			upEnd, originEnd := signalClosePair(t)
			first := h2OriginWith(t, r.upLeaf("www.example.test"), originEnd, func(w http.ResponseWriter, req *http.Request) {
				io.Copy(io.Discard, req.Body)
				io.WriteString(w, "h2 origin "+req.URL.Path)
			})
			o := &laxOrigin{t: t, expect0: true, slowHost: "evil.example.test"}
			r.offerRedial(tlsLaxConn(o, r.upLeaf("www.example.test")))
			r.offerRedial(tlsLaxConn(o, r.upLeaf("www.example.test")))
			c, sv := r.connect(upEnd, tlsDest)
			tc := bumpClient(t, r, c, "www.example.test", "http/1.1", "h2")
			if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
				t.Fatalf("client negotiated %q", p)
			}
			hc := newHTTPClient(t, tc)
			if resp, body := hc.do("GET /one HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("first %d %q", resp.StatusCode, body)
			}
			endFirstH2(t, first, upEnd)
			head := fmt.Sprintf("POST /a HTTP/1.1\r\nHost: www.example.test\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", len(hiddenRequest))
			get := "GET /c HTTP/1.1\r\nHost: www.example.test\r\n\r\n"
			var got []int
			var body string
			var err error
			if eager {
				io.WriteString(tc, head+hiddenRequest+get)
				got, body, err = readUntilFinal(t, hc.br, nil)
			} else {
				io.WriteString(tc, head)
				got, body, err = readUntilFinal(t, hc.br, func() { io.WriteString(tc, hiddenRequest) })
				if err == nil {
					io.WriteString(tc, get)
				}
			}
			_, cbody, cerr := readUntilFinal(t, hc.br, nil)
			tc.Close()
			sv.waitDoneOnce(t)
			raw, served := o.snapshot()
			fwd := strings.Contains(strings.ToLower(strings.Join(raw, "")), "expect:")
			t.Logf("POST: %v %q %v; GET /c: %q %v; Expect reached the HTTP/1 origin: %v; served %q", got, body, err, cbody, cerr, fwd, served)
			if fwd {
				t.Errorf("Expect reached the HTTP/1 origin through http.Transport")
			}
			for _, s := range served {
				if strings.Contains(s, "evil") {
					t.Errorf("the origin served the hidden request: %q", s)
				}
			}
			if cerr == nil && !strings.Contains(cbody, "/c") {
				t.Errorf("GET /c got %q", cbody)
			}
			if len(served) == 0 {
				t.Errorf("the redial origin served nothing: the test did not reach its path")
			}
			for _, rec := range ofKind(r.records(), "http") {
				t.Logf("record %s %s status %d bytes_out %d result %s error %q", rec.Method, rec.Path, rec.Status, rec.BytesOut, rec.Result, rec.Error)
			}
		})
	}
}
