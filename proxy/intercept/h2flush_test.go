package intercept_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// pollOrigin answers one request on its connection with a head of
// Content-Length total and the first bytes of the body, then waits for
// rest to be closed before it sends the remainder: a long poll, or a
// progress stream of a known length.
type pollOrigin struct {
	rest  chan struct{}
	first string
	total int
}

// startPollOrigin serves c, the destination's end of the upstream
// connection: cleartext HTTP/1.1, or with cert TLS offering h2 and
// HTTP/1.1.
func startPollOrigin(t *testing.T, c net.Conn, cert *tls.Certificate, first string, total int) *pollOrigin {
	o := &pollOrigin{rest: make(chan struct{}), first: first, total: total}
	if cert != nil {
		c = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}})
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			io.Copy(io.Discard, req.Body)
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", fmt.Sprint(total))
			io.WriteString(w, first)
			w.(http.Flusher).Flush()
			select {
			case <-o.rest:
			case <-req.Context().Done():
				return
			}
			io.WriteString(w, strings.Repeat("r", total-len(first)))
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go srv.Serve(newOneConnListener(c))
	t.Cleanup(func() { srv.Close(); c.Close() })
	return o
}

// want is the whole body the client should get.
func (o *pollOrigin) want() string { return o.first + strings.Repeat("r", o.total-len(o.first)) }

// checkPollBody reads resp's first len(o.first) bytes, which must come
// while the origin waits, then has the origin send the rest and reads it.
func checkPollBody(t *testing.T, o *pollOrigin, body io.Reader) {
	t.Helper()
	first := make(chan string, 1)
	go func() {
		b := make([]byte, len(o.first))
		n, _ := io.ReadFull(body, b)
		first <- string(b[:n])
	}()
	select {
	case got := <-first:
		if got != o.first {
			t.Fatalf("first bytes %q, want %q", got, o.first)
		}
	case <-time.After(waitLimit):
		t.Fatalf("the first %d bytes did not come while the origin waited", len(o.first))
	}
	close(o.rest)
	rest, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("reading the rest: %v", err)
	}
	if got := o.first + string(rest); got != o.want() {
		t.Fatalf("body %q, want %q", got, o.want())
	}
}

// TestH2KnownLengthHeadAndFirstBytes: an origin that answers with a
// Content-Length and sends the head and a few bytes, then waits, has them
// reach an HTTP/2 client (h2c and bumped h2) at once, not once 4 KiB or
// the body's end came; then the rest. An HTTP/1 client gets them at once
// as well.
func TestH2KnownLengthHeadAndFirstBytes(t *testing.T) {
	for _, via := range []string{"h2c", "h2", "http/1.1"} {
		t.Run(via, func(t *testing.T) {
			r := newRig(t, testPolicy)
			proxyEnd, originEnd := testnet.TCPPair(t)
			var cert *tls.Certificate
			if via == "h2" {
				cert = r.upLeaf("www.example.test")
			}
			o := startPollOrigin(t, originEnd, cert, "first", 100)
			var rt func(*http.Request) (*http.Response, error)
			scheme := "http"
			switch via {
			case "h2c":
				c, _ := r.connectTCP(proxyEnd, httpDest)
				c.SetDeadline(time.Now().Add(2 * waitLimit))
				cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
				if err != nil {
					t.Fatal(err)
				}
				rt = cc.RoundTrip
			case "h2":
				c, _ := r.connectTCP(proxyEnd, tlsDest)
				tc := bumpClient(t, r, c, "www.example.test", "h2")
				tc.SetDeadline(time.Now().Add(2 * waitLimit))
				cc, err := (&http2.Transport{}).NewClientConn(tc)
				if err != nil {
					t.Fatal(err)
				}
				rt, scheme = cc.RoundTrip, "https"
			default:
				c, _ := r.connectTCP(proxyEnd, httpDest)
				c.SetDeadline(time.Now().Add(2 * waitLimit))
				br := bufio.NewReader(c)
				rt = func(req *http.Request) (*http.Response, error) {
					if err := req.Write(c); err != nil {
						return nil, err
					}
					return http.ReadResponse(br, req)
				}
			}
			req, _ := http.NewRequest("GET", scheme+"://www.example.test/poll", nil)
			type answer struct {
				resp *http.Response
				err  error
			}
			head := make(chan answer, 1)
			go func() {
				resp, err := rt(req)
				head <- answer{resp, err}
			}()
			var a answer
			select {
			case a = <-head:
			case <-time.After(waitLimit):
				close(o.rest)
				t.Fatal("no response head while the origin waited")
			}
			if a.err != nil {
				t.Fatal(a.err)
			}
			defer a.resp.Body.Close()
			if a.resp.StatusCode != 200 || a.resp.ContentLength != 100 {
				t.Fatalf("status %d, length %d", a.resp.StatusCode, a.resp.ContentLength)
			}
			checkPollBody(t, o, a.resp.Body)
		})
	}
}

// TestH2KnownLengthBulkFrames: a fast body of a known length still
// reaches an HTTP/2 client whole, in DATA frames no smaller than the
// server's write buffer on average: the flushes that let a slow body's
// pieces go at once add no frames to a fast one.
func TestH2KnownLengthBulkFrames(t *testing.T) {
	const size = 1 << 20
	r := newRig(t, testPolicy)
	proxyEnd, originEnd := testnet.TCPPair(t)
	body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	go func() {
		defer originEnd.Close()
		originEnd.SetDeadline(time.Now().Add(2 * waitLimit))
		req, err := http.ReadRequest(bufio.NewReader(originEnd))
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		fmt.Fprintf(originEnd, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
		originEnd.Write(body)
		io.Copy(io.Discard, originEnd)
	}()
	c, _ := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(2 * waitLimit))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	io.WriteString(c, http2.ClientPreface)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	fr.WriteWindowUpdate(0, 1<<30)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "www.example.test"}, {Name: ":path", Value: "/bulk"}} {
		enc.WriteField(f)
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	var got bytes.Buffer
	frames, status := 0, ""
	for ended := false; !ended; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d bytes in %d DATA frames: %v", got.Len(), frames, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			status = f.PseudoValue("status")
			ended = f.StreamEnded()
		case *http2.DataFrame:
			if len(f.Data()) > 0 {
				frames++
				got.Write(f.Data())
			}
			ended = f.StreamEnded()
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset (%v) after %d bytes", f.ErrCode, got.Len())
		}
	}
	if status != "200" || !bytes.Equal(got.Bytes(), body) {
		t.Fatalf("status %q, %d bytes of %d (equal %v)", status, got.Len(), size, bytes.Equal(got.Bytes(), body))
	}
	t.Logf("%d bytes in %d DATA frames", got.Len(), frames)
	if max := size/(4<<10) + 2; frames > max {
		t.Errorf("%d DATA frames for %d bytes, want at most %d", frames, size, max)
	}
}
