package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// checkDeniedByReload fails t unless every http record says the reload
// denied its request.
func checkDeniedByReload(t *testing.T, r *rig) {
	t.Helper()
	recs := ofKind(r.records(), "http")
	if len(recs) == 0 {
		t.Fatal("no http record")
	}
	for _, rec := range recs {
		if rec.Result != "denied" || rec.Rule != "no-www" || !strings.Contains(rec.Error, "reload") {
			t.Errorf("record: result %s action %s rule %s status %d bytes_in %d error %q; want denied by the reload (no-www)",
				rec.Result, rec.Action, rec.Rule, rec.Status, rec.BytesIn, rec.Error)
		}
	}
}

// A chunked response whose data went before a denying reload and whose
// last chunk (and declared trailer) the destination sends after it: the
// last chunk would tell the client the response is whole, and the trailer
// is the destination's bytes, so neither goes on, and the record says the
// reload denied it. Only a known length's end, its every byte gone, is
// exempt (TestReloadDecidesOpenConnectionsRequests).
func TestReloadDeniesChunkedEndAndTrailer(t *testing.T) {
	for _, withTrailer := range []bool{true, false} {
		t.Run(map[bool]string{true: "trailer", false: "no-trailer"}[withTrailer], func(t *testing.T) {
			r, holder := newReloadableRig(t)
			proxyEnd, originEnd := testnet.TCPPair(t)
			release := make(chan struct{})
			go func() {
				br := bufio.NewReader(originEnd)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				head := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
				if withTrailer {
					head += "Trailer: X-Leak\r\n"
				}
				io.WriteString(originEnd, head+"\r\n5\r\nhello\r\n")
				<-release
				end := "0\r\n"
				if withTrailer {
					end += "X-Leak: sent-after-the-reload\r\n"
				}
				io.WriteString(originEnd, end+"\r\n")
				io.Copy(io.Discard, originEnd)
			}()
			c, sv := r.connectTCP(proxyEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(c, "GET /dl HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			var mu sync.Mutex
			var got strings.Builder
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					mu.Lock()
					got.Write(buf[:n])
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
			has := func(s string) bool { mu.Lock(); defer mu.Unlock(); return strings.Contains(got.String(), s) }
			for deadline := time.Now().Add(waitLimit); !has("hello"); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the client never got the body's bytes")
				}
			}
			time.Sleep(100 * time.Millisecond) // the appliance's next body read waits on the origin
			reloadTo(t, holder, tightenedPolicy)
			time.Sleep(20 * time.Millisecond)
			close(release)
			select {
			case <-readDone: // the appliance ended the connection
			case <-time.After(waitLimit):
				t.Error("the client's connection stayed open after a reload denied its response")
			}
			mu.Lock()
			all := got.String()
			mu.Unlock()
			tail := all[strings.Index(all, "hello"):]
			if strings.Contains(tail, "sent-after-the-reload") || strings.Contains(tail, "0\r\n") {
				t.Errorf("the client got %q after the body's bytes: the response's end, sent after a denying reload, went on", tail)
			}
			c.Close()
			sv.waitDoneOnce(t)
			checkDeniedByReload(t, r)
		})
	}
}

// The same from an HTTP/2 origin to a bumped HTTP/2 client: the origin's
// trailers and END_STREAM, sent after a denying reload, do not go on; the
// client's stream is reset.
func TestReloadDeniesH2StreamEndAndTrailer(t *testing.T) {
	r, holder := newReloadableRig(t)
	proxyEnd, originEnd := testnet.TCPPair(t)
	release := make(chan struct{})
	oc := tls.Server(originEnd, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"}})
	go func() {
		if oc.Handshake() != nil {
			return
		}
		(&http2.Server{}).ServeConn(oc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Trailer", "X-Leak")
			w.WriteHeader(200)
			w.Write([]byte("hello"))
			w.(http.Flusher).Flush()
			<-release
			w.Header().Set("X-Leak", "sent-after-the-reload")
		})})
	}()
	c, sv := r.connectTCP(proxyEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	tlsc.SetDeadline(time.Now().Add(waitLimit))
	cc, err := (&http2.Transport{}).NewClientConn(tlsc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://www.example.test/dl", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the appliance's next body read waits on the origin
	reloadTo(t, holder, tightenedPolicy)
	time.Sleep(20 * time.Millisecond)
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Errorf("the client's stream ended whole (rest %q) though a reload denied it before its end", rest)
	}
	if v := resp.Trailer.Get("X-Leak"); v != "" {
		t.Errorf("the client got the trailer %q the origin sent after a denying reload", v)
	}
	cc.Close()
	c.Close()
	sv.waitDoneOnce(t)
	checkDeniedByReload(t, r)
}
