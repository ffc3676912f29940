package intercept_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// keptOrigin is a destination that keeps every byte it is sent, and
// answers answer once what it got contains answerOn ("": never).
type keptOrigin struct {
	mu       sync.Mutex
	got      bytes.Buffer
	more     chan struct{} // a read came (or the connection ended)
	ended    chan struct{} // closed once its connection ended
	answerOn string
	answer   string
}

// startKeptOrigin serves c, the destination's end of the upstream
// connection, as a keptOrigin.
func startKeptOrigin(t *testing.T, c net.Conn, answerOn, answer string) *keptOrigin {
	o := &keptOrigin{more: make(chan struct{}, 1), ended: make(chan struct{}), answerOn: answerOn, answer: answer}
	go func() {
		defer close(o.ended)
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * waitLimit))
		buf := make([]byte, 4096)
		answered := false
		for {
			n, err := c.Read(buf)
			o.mu.Lock()
			o.got.Write(buf[:n])
			send := !answered && o.answerOn != "" && strings.Contains(o.got.String(), o.answerOn)
			o.mu.Unlock()
			select {
			case o.more <- struct{}{}:
			default:
			}
			if send {
				answered = true
				io.WriteString(c, o.answer)
			}
			if err != nil {
				return
			}
		}
	}()
	return o
}

// has reports whether the origin got s.
func (o *keptOrigin) has(s string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Contains(o.got.String(), s)
}

// waitFor waits, within waitLimit, for the origin to get s.
func (o *keptOrigin) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(waitLimit)
	for !o.has(s) {
		select {
		case <-o.more:
		case <-o.ended:
			if !o.has(s) {
				t.Fatalf("the origin's connection ended without %q", s)
			}
		case <-deadline:
			t.Fatalf("the origin never got %q", s)
		}
	}
}

// waitEnded waits, within waitLimit, for the origin's connection to end.
func (o *keptOrigin) waitEnded(t *testing.T) {
	t.Helper()
	select {
	case <-o.ended:
	case <-time.After(waitLimit):
		t.Fatal("the origin's connection was not ended")
	}
}

// piece is the i'th piece of a streamed body: each one is told apart.
func piece(i int) string { return fmt.Sprintf("secret-%03d;", i) }

// newReloadableRig is a rig whose policy a test can reload through holder,
// which holds the rig's policy to start with.
func newReloadableRig(t *testing.T) (*rig, *policy.Holder) {
	holder := new(policy.Holder)
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Policy = holder })
	holder.Store(r.pol)
	return r, holder
}

// reloadTo stores the policy text in holder, as a reload does, and
// returns it.
func reloadTo(t *testing.T, holder *policy.Holder, text string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("policy.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	holder.Store(p)
	return p
}

// wwwRecord returns the one http record of www.example.test.
func wwwRecord(t *testing.T, r *rig) records.Record {
	t.Helper()
	var out []records.Record
	for _, rec := range ofKind(r.records(), "http") {
		if rec.Host == "www.example.test" {
			out = append(out, rec)
		}
	}
	if len(out) != 1 {
		t.Fatalf("http records of www.example.test %+v, want one", out)
	}
	return out[0]
}

// checkReloadDenied fails unless rec says the reload to after ended it, by
// rule no-www, with only the body before the reload (sentBefore bytes)
// sent upstream.
func checkReloadDenied(t *testing.T, rec records.Record, after *policy.Policy, sentBefore int64) {
	t.Helper()
	if rec.Action != "deny" || rec.Rule != "no-www" || rec.Policy != after.ID() || rec.Result != "denied" ||
		!strings.Contains(rec.Error, "ended by a policy reload: denied by policy") || rec.BytesOut != sentBefore {
		t.Errorf("record %+v; want action deny by rule no-www of the reload's policy %q, result denied, "+
			"error ended by a policy reload, bytes_out %d (the body before it)", rec, after.ID(), sentBefore)
	}
}

// TestReloadEndsStreamingRequestBody: a request whose body was under way
// when a reload denied its name went on streaming it to the destination,
// without bound (20 of 20 chunks written after the reload reached it): a
// request body is a channel to the name as a WebSocket tunnel is. Now its
// next bytes after the reload are decided again, as a tunnel's are: the
// deny ends the request (its HTTP/1 connection is reset, nothing may
// follow), nothing read after the reload goes upstream, and the record
// says the reload denied it. Cleartext chunked, cleartext with a large
// Content-Length, and bumped.
func TestReloadEndsStreamingRequestBody(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bumped bool
		head   string
		frame  func(string) string
	}{
		{"chunked", false, "Transfer-Encoding: chunked", func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }},
		{"content-length", false, "Content-Length: 1000000", func(s string) string { return s }},
		{"bumped", true, "Transfer-Encoding: chunked", func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, holder := newReloadableRig(t)
			proxyEnd, originEnd := testnet.TCPPair(t)
			var oc net.Conn = originEnd
			dest := httpDest
			if tc.bumped {
				oc = tls.Server(originEnd, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"http/1.1"}})
				dest = tlsDest
			}
			o := startKeptOrigin(t, oc, "", "")
			tcp, sv := r.connectTCP(proxyEnd, dest)
			var c net.Conn = tcp
			if tc.bumped {
				c = bumpClient(t, r, tcp, "www.example.test", "http/1.1")
			}
			c.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: www.example.test\r\n"+tc.head+"\r\n\r\n"+tc.frame(piece(0)))
			o.waitFor(t, piece(0))
			after := reloadTo(t, holder, tightenedPolicy)
			for i := 1; i <= 5; i++ {
				if _, err := io.WriteString(c, tc.frame(piece(i))); err != nil {
					break // the reset came
				}
			}
			if n, err := io.Copy(io.Discard, c); n != 0 || isTimeout(err) {
				// No answer: the request is cut mid-body, and its
				// connection with it.
				t.Errorf("the client's connection gave %d bytes and ended with %v, want it ended with no answer", n, err)
			}
			o.waitEnded(t)
			for i := 1; i <= 5; i++ {
				if o.has(piece(i)) {
					t.Errorf("%q, written after the reload denied the name, reached the origin", piece(i))
				}
			}
			c.Close()
			sv.waitDoneOnce(t)
			checkReloadDenied(t, wwwRecord(t, r), after, int64(len(piece(0))))
		})
	}
}

// TestReloadEndsStreamingRequestBodyH2C: the same over HTTP/2 (h2c): a
// stream opened before the reload kept carrying DATA to the name while a
// new stream for it got 403. Now the stream's next DATA after the reload
// ends it, with a 403, and only it: the connection serves on.
func TestReloadEndsStreamingRequestBodyH2C(t *testing.T) {
	r, holder := newReloadableRig(t)
	proxyEnd, originEnd := testnet.TCPPair(t)
	o := startKeptOrigin(t, originEnd, "", "")
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	pc := newProbeClientOn(t, c, "http")
	id := pc.open("POST", "/upload", false)
	pc.data(id, []byte(piece(0)), false)
	o.waitFor(t, piece(0))
	after := reloadTo(t, holder, tightenedPolicy)
	for i := 1; i <= 5; i++ {
		pc.data(id, []byte(piece(i)), false)
	}
	if !waitFor(t, "the stream's answer", waitLimit, func() bool { return pc.status(id) != "" }) {
		t.Fatal("the stream the reload denied got no answer")
	}
	if s := pc.status(id); s != "403" {
		t.Errorf("the stream the reload denied got %q, want 403", s)
	}
	o.waitEnded(t) // the upload cut short: the upstream connection cannot serve on
	for i := 1; i <= 5; i++ {
		if o.has(piece(i)) {
			t.Errorf("%q, written after the reload denied the name, reached the origin", piece(i))
		}
	}
	select {
	case <-pc.dead:
		t.Error("the client's connection ended with the stream")
	default:
	}
	c.Close()
	sv.waitDoneOnce(t)
	checkReloadDenied(t, wwwRecord(t, r), after, int64(len(piece(0))))
}

// TestReloadEndsStreamingResponseBody: a download under way when a reload
// denies its name is ended the same way: what the destination sends after
// it does not reach the client.
func TestReloadEndsStreamingResponseBody(t *testing.T) {
	r, holder := newReloadableRig(t)
	proxyEnd, originEnd := testnet.TCPPair(t)
	originEnd.SetDeadline(time.Now().Add(waitLimit))
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(c, "GET /download HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	if _, err := http.ReadRequest(bufio.NewReader(originEnd)); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(originEnd, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n%s", piece(0))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, len(piece(0)))); err != nil {
		t.Fatalf("the download's first piece: %v", err)
	}
	after := reloadTo(t, holder, tightenedPolicy)
	for i := 1; i <= 5; i++ {
		if _, err := io.WriteString(originEnd, piece(i)); err != nil {
			break // the reset came
		}
	}
	rest, err := io.ReadAll(resp.Body)
	if err == nil || len(rest) != 0 {
		t.Errorf("after the reload the client got %q, and %v, want nothing and a reset", rest, err)
	}
	c.Close()
	sv.waitDoneOnce(t)
	rec := wwwRecord(t, r)
	checkReloadDenied(t, rec, after, 0)
	if rec.BytesIn != int64(len(piece(0))) {
		t.Errorf("record's bytes_in %d, want %d (the body before the reload): %+v", rec.BytesIn, len(piece(0)), rec)
	}
}

// TestReloadEndsStreamingResponseBodyH2C: a download on an HTTP/2 stream
// a reload denies is reset, not ended as if whole; the connection serves
// on.
func TestReloadEndsStreamingResponseBodyH2C(t *testing.T) {
	r, holder := newReloadableRig(t)
	proxyEnd, originEnd := testnet.TCPPair(t)
	originEnd.SetDeadline(time.Now().Add(waitLimit))
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		resp *http.Response
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://www.example.test/download", nil)
		resp, err := cc.RoundTrip(req)
		answered <- answer{resp, err}
	}()
	if _, err := http.ReadRequest(bufio.NewReader(originEnd)); err != nil {
		select {
		case a := <-answered:
			t.Fatalf("the origin got no request: %v; the client: %v", err, a.err)
		default:
		}
		t.Fatalf("the origin got no request: %v", err)
	}
	// More than the server's buffer for a stream holds, so that some of
	// it reaches the client before the reload.
	first := piece(0) + strings.Repeat(".", 16<<10)
	fmt.Fprintf(originEnd, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n%s", first)
	a := <-answered
	if a.err != nil {
		t.Fatal(a.err)
	}
	if _, err := io.ReadFull(a.resp.Body, make([]byte, len(piece(0)))); err != nil {
		t.Fatalf("the download's first piece: %v", err)
	}
	after := reloadTo(t, holder, tightenedPolicy)
	for i := 1; i <= 5; i++ {
		if _, err := io.WriteString(originEnd, piece(i)); err != nil {
			break // the upstream connection was closed
		}
	}
	rest, err := io.ReadAll(a.resp.Body)
	var se http2.StreamError
	if !errors.As(err, &se) {
		t.Errorf("after the reload the client's read ended with %v, want the stream reset", err)
	}
	for i := 1; i <= 5; i++ {
		if strings.Contains(string(rest), piece(i)) {
			t.Errorf("%q, sent after the reload denied the name, reached the client", piece(i))
		}
	}
	c.Close()
	sv.waitDoneOnce(t)
	rec := wwwRecord(t, r)
	checkReloadDenied(t, rec, after, 0)
	if rec.BytesIn > int64(len(first)) {
		t.Errorf("record's bytes_in %d, more than the %d bytes before the reload: %+v", rec.BytesIn, len(first), rec)
	}
}

// TestReloadAllowedKeepsStreamingRequestBody: a reload that still allows
// the name does not disturb a body under way: every piece reaches the
// destination, and its answer the client.
func TestReloadAllowedKeepsStreamingRequestBody(t *testing.T) {
	r, holder := newReloadableRig(t)
	proxyEnd, originEnd := testnet.TCPPair(t)
	o := startKeptOrigin(t, originEnd, "0\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	chunk := func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n"+chunk(piece(0)))
	o.waitFor(t, piece(0))
	reloadTo(t, holder, "policy: {default: allow}\n")
	for i := 1; i <= 5; i++ {
		io.WriteString(c, chunk(piece(i)))
	}
	io.WriteString(c, "0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer after a reload that still allows the name: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("answer %d %q, want the destination's 200 ok", resp.StatusCode, body)
	}
	for i := 0; i <= 5; i++ {
		if !o.has(piece(i)) {
			t.Errorf("%q did not reach the origin", piece(i))
		}
	}
	c.Close()
	sv.waitDoneOnce(t)
	if rec := wwwRecord(t, r); rec.Result != "ok" || rec.Error != "" || rec.Action == "deny" || rec.BytesOut != int64(6*len(piece(0))) {
		t.Errorf("record %+v, want the request ok, all %d body bytes out", rec, 6*len(piece(0)))
	}
}

// isTimeout reports whether err is a deadline's.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
