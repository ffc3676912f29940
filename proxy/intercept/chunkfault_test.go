package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// earlyOrigin is an HTTP/1 origin that answers a request as soon as it
// has read its head, and never reads its body as one: what comes after
// the head on that connection is read and thrown away (a 401 or 413
// answered before the upload, or a server that ignores bodies). With
// readFirst it answers nothing, and reads the request's bytes until the
// connection ends. With stream, its answer is a chunked 200 of that many
// 5-byte chunks, 30 ms apart. With chunkedAnswer, its answer is chunked
// ("large"), with no Content-Length. With stall, it reads nothing after
// its answer, over a connection that buffers nothing (net.Pipe): the
// transport's writer blocks on the body's first bytes.
//
// With leaf, the origin speaks TLS with it (a bumped connection's).
type earlyOrigin struct {
	t             *testing.T
	status        int
	readFirst     bool
	stream        int
	leaf          *tls.Certificate
	chunkedAnswer bool
	trailer       string // with chunkedAnswer: a trailer field, announced in the head
	stall         bool

	mu    sync.Mutex
	heads []string      // request lines, in the order read
	ended chan struct{} // with stall: closed as the test ends
}

// conn returns the appliance's end of a new connection to the origin.
func (o *earlyOrigin) conn() net.Conn {
	var proxyEnd, serverEnd net.Conn
	if o.stall {
		proxyEnd, serverEnd = net.Pipe()
		ended := make(chan struct{})
		o.t.Cleanup(func() { close(ended) })
		o.mu.Lock()
		o.ended = ended
		o.mu.Unlock()
	} else {
		proxyEnd, serverEnd = testnet.TCPPair(o.t)
	}
	o.t.Cleanup(func() { proxyEnd.Close(); serverEnd.Close() })
	go o.serve(h1OriginSide(serverEnd, o.leaf))
	return proxyEnd
}

// h1OriginSide is an HTTP/1 origin's end of its connection: serverEnd
// itself, or over TLS with leaf, offering only http/1.1.
func h1OriginSide(serverEnd net.Conn, leaf *tls.Certificate) net.Conn {
	if leaf == nil {
		return serverEnd
	}
	return tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}})
}

func (o *earlyOrigin) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if h == "\r\n" {
			break
		}
	}
	o.mu.Lock()
	o.heads = append(o.heads, strings.TrimRight(line, "\r\n"))
	o.mu.Unlock()
	if o.stream > 0 {
		go io.Copy(io.Discard, br)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		for i := 0; i < o.stream; i++ {
			time.Sleep(30 * time.Millisecond)
			if _, err := io.WriteString(c, "5\r\nhello\r\n"); err != nil {
				return
			}
		}
		io.WriteString(c, "0\r\n\r\n")
	} else if o.chunkedAnswer && o.trailer != "" {
		name, _, _ := strings.Cut(o.trailer, ":")
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nTransfer-Encoding: chunked\r\nTrailer: %s\r\n\r\n5\r\nlarge\r\n0\r\n%s\r\n\r\n",
			o.status, http.StatusText(o.status), name, o.trailer)
	} else if o.chunkedAnswer {
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nlarge\r\n0\r\n\r\n", o.status, http.StatusText(o.status))
	} else if !o.readFirst {
		body := ""
		if o.status != http.StatusNoContent {
			body = "early answer"
		}
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s", o.status, http.StatusText(o.status), len(body), body)
	}
	if o.stall {
		o.mu.Lock()
		ended := o.ended
		o.mu.Unlock()
		<-ended
		return
	}
	io.Copy(io.Discard, br)
}

func (o *earlyOrigin) served() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.heads...)
}

const (
	chunkedHead = "POST /a HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
	// smuggledHead is a request, were the body's framing read past a
	// fault.
	smuggledHead = "GET /smuggled HTTP/1.1\r\nHost: www.example.test\r\n\r\n"
	// badChunk is a size line net/http refuses, and what follows it a
	// request; chunkFault is net/http's error for it.
	badChunk   = "zz\r\n" + smuggledHead
	chunkFault = "invalid byte in chunk length"
)

// chunkClient opens the client's connection to o for www.example.test,
// cleartext or bumped, with another connection to o on offer should
// the appliance dial again. It returns the connection and the action its
// requests' records carry.
func chunkClient(t *testing.T, r *rig, o *earlyOrigin, bumped bool) (net.Conn, string) {
	t.Helper()
	var c net.Conn
	action := "allow"
	if bumped {
		o.leaf = r.upLeaf("www.example.test")
		c, _ = bumpedHTTP1(t, r, o.conn())
		action = "bump"
	} else {
		c, _ = r.connectTCP(o.conn(), httpDest)
	}
	r.offerRedial(o.conn())
	c.SetDeadline(time.Now().Add(waitLimit))
	return c, action
}

// checkChunkFault checks what follows a malformed chunked body: the client
// got one response, with status want (0: any), and then its connection
// ended; the request's record has the status the client got, result
// error and the body's fault; nothing after the bad chunk was served,
// relayed or recorded. action is the record's (allow, or bump on a bumped
// connection), fault the start of net/http's error for the body.
// cleartextAndBumped runs f as two subtests, over cleartext HTTP/1 and
// bumped HTTPS.
func cleartextAndBumped(t *testing.T, f func(t *testing.T, bumped bool)) {
	for _, bumped := range []bool{false, true} {
		t.Run(fmt.Sprintf("bumped=%v", bumped), func(t *testing.T) { f(t, bumped) })
	}
}

// earlyAnswered opens a client (bumped or not) to o, sends a chunked
// POST's head and first chunk, and reads the head of the origin's early
// answer.
func earlyAnswered(t *testing.T, o *earlyOrigin, bumped bool) (r *rig, c net.Conn, br *bufio.Reader, resp *http.Response, action string) {
	t.Helper()
	return earlyAnsweredTo(t, o, bumped, chunkedHead+"3\r\nabc\r\n")
}

// earlyAnsweredTo opens a client (bumped or not) to o, sends sent (a
// POST's head and its body's first bytes), and reads the head of the
// origin's early answer.
func earlyAnsweredTo(t *testing.T, o *earlyOrigin, bumped bool, sent string) (r *rig, c net.Conn, br *bufio.Reader, resp *http.Response, action string) {
	t.Helper()
	r = newRig(t, testPolicy)
	c, action = chunkClient(t, r, o, bumped)
	io.WriteString(c, sent)
	br = bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
	if err != nil {
		t.Fatalf("no early answer: %v", err)
	}
	return r, c, br, resp, action
}

func checkChunkFault(t *testing.T, r *rig, served func() []string, c net.Conn, br *bufio.Reader, want int, action, fault string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodPost})
	if err != nil {
		t.Fatalf("no response to POST /a: %v", err)
	}
	io.ReadAll(resp.Body)
	got := resp.StatusCode
	if want != 0 && got != want {
		t.Errorf("response %d, want %d", got, want)
	}
	checkChunkFaultAfter(t, r, served, c, br, got, action, fault)
}

// checkChunkFaultAfter is checkChunkFault once the client has its
// response, with status got.
func checkChunkFaultAfter(t *testing.T, r *rig, served func() []string, c net.Conn, br *bufio.Reader, got int, action, fault string) {
	t.Helper()
	if next, err := http.ReadResponse(br, nil); err == nil {
		t.Errorf("a second response, %d: the bytes after the bad chunk were served as a request", next.StatusCode)
	} else if err != io.EOF && err != io.ErrUnexpectedEOF && !strings.Contains(err.Error(), "reset") {
		t.Errorf("after the response: %v, want the connection closed", err)
	}
	c.Close()
	var found bool
	for _, rec := range ofKind(r.records(), "http") {
		switch rec.Path {
		case "/a":
			found = true
			if rec.Action != action || rec.Rule != "default" || rec.Status != got || rec.Result != "error" ||
				!strings.HasPrefix(rec.Error, "malformed request body: "+fault) {
				t.Errorf("record: action %s rule %q status %d result %s error %q, want the decision (%s, default), %d (what the client got), error, malformed request body: %s",
					rec.Action, rec.Rule, rec.Status, rec.Result, rec.Error, action, got, fault)
			}
		case "/smuggled":
			t.Errorf("the bytes after the bad chunk were taken for a request: %+v", rec)
		}
	}
	if !found {
		t.Error("no record for POST /a")
	}
	for _, h := range served() {
		if strings.Contains(h, "/smuggled") {
			t.Errorf("the origin was sent %q", h)
		}
	}
}

// TestChunkFaultAfterAnswer: the origin answers a chunked POST from its
// head, and the client, having read that answer, sends a chunk net/http
// cannot read, then a request. The framing error is found only after the
// response head went out: the client keeps the origin's answer, its
// connection then ends, the record keeps the origin's status with result
// error and the body's fault, and nothing after the bad chunk is served.
// Before, goproxy's loop read the request after the bad chunk and served
// it (a request smuggled behind another), and the POST's record said ok.
// A 204 has goproxy decide to go on before it closes the response body:
// the head it then reads from its buffers is refused unserved. Cleartext
// and bumped (the record's action is bump).
func TestChunkFaultAfterAnswer(t *testing.T) {
	for _, bumped := range []bool{false, true} {
		for _, status := range []int{http.StatusOK, http.StatusNoContent} {
			t.Run(fmt.Sprintf("%d/bumped=%v", status, bumped), func(t *testing.T) {
				o := &earlyOrigin{t: t, status: status}
				r, c, br, resp, action := earlyAnswered(t, o, bumped)
				io.ReadAll(resp.Body)
				if resp.StatusCode != status {
					t.Fatalf("response %d, want the origin's %d", resp.StatusCode, status)
				}
				io.WriteString(c, badChunk)
				checkChunkFaultAfter(t, r, o.served, c, br, status, action, chunkFault)
			})
		}
	}
}

// TestChunkFaultBeforeAnswer: the origin reads the body as it comes and
// would answer at its end; the bad chunk breaks the round trip first, so
// the client gets a 400 and the connection closes. Cleartext and bumped.
func TestChunkFaultBeforeAnswer(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		r := newRig(t, testPolicy)
		o := &earlyOrigin{t: t, readFirst: true}
		c, action := chunkClient(t, r, o, bumped)
		io.WriteString(c, chunkedHead+"3\r\nabc\r\n"+badChunk)
		checkChunkFault(t, r, o.served, c, bufio.NewReader(c), http.StatusBadRequest, action, chunkFault)
	})
}

// TestChunkFaultEveryWord: each of net/http's chunked reader errors
// (chunkedBodyErrors' words for it) gets the client a 400, its connection
// closed, and the record "malformed request body: <its words>", not only
// "invalid byte in chunk length", the one other tests send. The words are
// matched against Go's own: should a Go release reword one, this fails
// rather than the record silently blaming the client's going away. The
// trailer's words are TestChunkTrailerFault's. Holds chunkedBodyErrors'
// entries (mutant R09: the bare-LF and invalid-CR words dropped, the
// record then said result reset, "the client went away", and a 502).
func TestChunkFaultEveryWord(t *testing.T) {
	for _, tc := range []struct{ name, bad, fault string }{
		{"badbyte", "zz\r\n", "invalid byte in chunk length"},
		{"bareLF", "3\nabc\r\n", "chunked line ends with bare LF"},
		{"CR", "3;a\rb\r\nabc\r\n", "invalid CR in chunked line"},
		{"empty", "\r\n", "empty hex number for chunk length"},
		{"toolarge", "10000000000000000\r\n", "http chunk length too large"},
		{"nocrlf", "3\r\nabcXY", "malformed chunked encoding"},
		{"longline", "1;" + strings.Repeat("x", 5000) + "\r\na\r\n", "header line too long"},
		// Extensions ~1000 bytes each on one-byte chunks: past net/http's
		// 16 KiB allowance of framing over data.
		{"nondata", strings.Repeat("1;"+strings.Repeat("x", 1000)+"\r\na\r\n", 20), "chunked encoding contains too much non-data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &earlyOrigin{t: t, readFirst: true}
			c, action := chunkClient(t, r, o, false)
			io.WriteString(c, chunkedHead+"3\r\nabc\r\n"+tc.bad+smuggledHead)
			checkChunkFault(t, r, o.served, c, bufio.NewReader(c), http.StatusBadRequest, action, tc.fault)
		})
	}
}

// TestChunkFaultWhileStreaming: the origin streams its answer while the
// upload goes on, and the bad chunk comes in the middle of that stream.
// The appliance ends the response with the connection (the transport's
// writer closes the upstream connection when the body breaks), so the
// client gets part of the answer and nothing after the bad chunk is
// served; the record keeps the status with the body's fault alone,
// "malformed request body: ...". Before, it first blamed the destination
// for the cut ("response body from the destination, after 5 bytes: ...
// use of closed network connection; malformed request body: ...").
func TestChunkFaultWhileStreaming(t *testing.T) {
	cleartextAndBumped(t, func(t *testing.T, bumped bool) {
		o := &earlyOrigin{t: t, status: http.StatusOK, stream: 20}
		r, c, br, resp, action := earlyAnswered(t, o, bumped)
		io.WriteString(c, badChunk)
		if b, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("the whole answer (%d bytes) came: the response was not cut", len(b))
		}
		checkChunkFaultAfter(t, r, o.served, c, br, http.StatusOK, action, chunkFault)
	})
}

// TestChunkSizePastInt64: a chunk size of 16 hex digits, which net/http
// takes, but which the boundaries cannot count (chunks.go,
// maxChunkPrefix), sent with data and the body's end in one write, then
// the client's FIN. The connection goes on as any other whose boundaries
// were given up: net/http waits for the chunk's data, the body ends short,
// and the client gets its 400 with a record of it. Holds the prefix check
// (mutant C06, the check removed): the overflowed count then indexed out
// of range in the client connection's goroutine, a panic of the process.
func TestChunkSizePastInt64(t *testing.T) {
	for _, size := range []string{"8000000000000000", "FFFFFFFFFFFFFFFF", "7FFFFFFFFFFFFFFF"} {
		t.Run(size, func(t *testing.T) {
			r := newRig(t, testPolicy)
			o := &earlyOrigin{t: t, readFirst: true}
			c, _ := chunkClient(t, r, o, false)
			io.WriteString(c, chunkedHead+size+"\r\nabcdefgh\r\n0\r\n\r\n")
			c.(interface{ CloseWrite() error }).CloseWrite()
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodPost})
			if err != nil {
				t.Fatalf("no response to POST /a: %v", err)
			}
			io.ReadAll(resp.Body)
			c.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("response %d, want %d", resp.StatusCode, http.StatusBadRequest)
			}
			var found bool
			for _, rec := range ofKind(r.records(), "http") {
				if rec.Path == "/a" {
					found = true
					if rec.Status != resp.StatusCode || rec.Result != "error" || rec.Error != "malformed request body: unexpected EOF" {
						t.Errorf("record: status %d result %s error %q, want %d, error, malformed request body: unexpected EOF",
							rec.Status, rec.Result, rec.Error, resp.StatusCode)
					}
				}
			}
			if !found {
				t.Error("no record for POST /a")
			}
		})
	}
}
