package intercept_test

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestExpectOddSpellingFromH2ClientNotForwarded: an HTTP/2 client spells
// its expectation with a space net/http's HTTP/2 server does not take for
// one (a no-break space), so the field reaches the appliance. Were it
// forwarded, net/http's transport would send the body after an origin's
// early answer on a connection it keeps, and an origin that answered
// without reading it (laxOrigin's expect0) would serve the body, a
// request for a name the policy denies, and hand its answer to the
// client's next request. The field goes nowhere: the origin reads the
// body as a body, and the next request gets its own answer.
func TestExpectOddSpellingFromH2ClientNotForwarded(t *testing.T) {
	for _, v := range []string{"100-continue", "100-continue\u00a0", "\u00a0100-continue"} {
		t.Run(strconv.Quote(v), func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &laxOrigin{t: t, expect0: true, slowHost: "evil.example.test"}
			cc, _ := r.h2cClient(t, o.conn())
			r.offerRedial(o.conn())
			r.offerRedial(o.conn())
			req, _ := http.NewRequest("POST", "http://www.example.test/a", strings.NewReader(hiddenRequest))
			req.ContentLength = int64(len(hiddenRequest))
			req.Header["Expect"] = []string{v}
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatalf("POST: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			_, body := h2cGet(t, cc, "http://www.example.test/c")
			cc.Close()
			raw, served := o.snapshot()
			for i, s := range raw {
				if strings.Contains(strings.ToLower(s), "expect:") {
					t.Errorf("upstream connection %d got an Expect field", i)
				}
			}
			for _, s := range served {
				if strings.Contains(s, "evil") {
					t.Errorf("the origin served the body's request for a denied name: %q", s)
				}
			}
			if body != "origin served GET www.example.test /c" {
				t.Errorf("GET /c got %q, want its own answer", body)
			}
		})
	}
}

// TestExpectAnswered101SendsNoBody: an origin that switches protocols at
// once on a request that expects a 100 never asked for the body: none of
// it goes after the 101, the client is never told "100 Continue", and the
// answer (the appliance's 502 for an upgrade the request did not offer)
// comes at once, not after the wait for a 100 (made long here).
func TestExpectAnswered101SendsNoBody(t *testing.T) {
	t.Cleanup(intercept.SetExpectContinueTimeout(5 * time.Second))
	r := newRig(t, testPolicy)
	proxyEnd, originEnd := testnet.TCPPair(t)
	t.Cleanup(func() { proxyEnd.Close(); originEnd.Close() })
	var mu sync.Mutex
	var got bytes.Buffer
	originDone := make(chan struct{})
	go func() {
		defer close(originDone)
		originEnd.SetDeadline(time.Now().Add(waitLimit))
		br := bufio.NewReader(originEnd)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		mu.Lock()
		got.WriteString(req.Header.Get("Expect"))
		mu.Unlock()
		io.WriteString(originEnd, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		rest, _ := io.ReadAll(br)
		mu.Lock()
		got.Write(rest)
		mu.Unlock()
	}()
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	start := time.Now()
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	took := time.Since(start)
	io.WriteString(c, "HELLO") // what a client that did not wait would send
	c.Close()
	sv.waitDoneOnce(t)
	proxyEnd.Close()
	<-originDone
	if resp.StatusCode == http.StatusContinue {
		t.Errorf("the client was told 100 Continue, which the origin never said")
	}
	if took > 2*time.Second {
		t.Errorf("the answer took %v: it waited for a 100 after the origin had answered", took)
	}
	mu.Lock()
	defer mu.Unlock()
	if s := got.String(); s != "100-continue" {
		t.Errorf("the origin got %q after the head's expectation, want the expectation and no body", s)
	}
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("the client got %d, want the 502 for an upgrade it did not offer", resp.StatusCode)
	}
	recs := ofKind(r.records(), "http")
	if len(recs) != 1 {
		t.Fatalf("%d http records, want 1", len(recs))
	}
	// The origin answered: the record says what it answered, not that
	// the request could not be written.
	if rec := recs[0]; rec.BytesOut != 0 || rec.Status != http.StatusBadGateway || rec.Error != "a WebSocket upgrade the request did not offer" {
		t.Errorf("record status %d bytes_out %d error %q, want 502, 0 and the upgrade the request did not offer", rec.Status, rec.BytesOut, rec.Error)
	}
}
