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
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// wantIdleClosed waits for the appliance to close c cleanly (an end of
// stream, no reset) and checks that it waited about the idle timeout
// since start.
func wantIdleClosed(t *testing.T, br io.Reader, start time.Time, timeout time.Duration) {
	t.Helper()
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("the connection did not end cleanly: %v (after %q)", err, rest)
	}
	if len(rest) > 0 {
		t.Errorf("bytes before the close: %q", rest)
	}
	if took := time.Since(start); took < timeout*3/4 || took > timeout+waitLimit/2 {
		t.Errorf("closed after %v; the idle timeout is %v", took, timeout)
	}
}

// wantIdleRecord checks the connection's tls record after an idle close:
// ok, and saying why it ended.
func wantIdleRecord(t *testing.T, r *rig) {
	t.Helper()
	recs := ofKind(r.records(), "tls")
	if len(recs) != 1 || recs[0].Result != "ok" || !strings.Contains(recs[0].Error, "no request for") {
		t.Fatalf("tls records %+v; want one, result ok, error saying no request came", recs)
	}
}

// h2Request writes a GET for path on stream id, over TLS or cleartext.
func h2Request(fr *http2.Framer, id uint32, scheme, path string) error {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: scheme}, {Name: ":path", Value: path},
		{Name: ":authority", Value: "www.example.test"},
	} {
		enc.WriteField(f)
	}
	return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
}

// A client connection with no request in flight and no byte of a new one
// for the idle timeout is closed by the appliance, cleanly: an HTTP/1
// client's after its last response (or with none at all), an HTTP/2
// client's with a GOAWAY (NO_ERROR, naming its last stream) first. A
// bumped connection's record says so, result ok. Before, the connection
// was held for as long as the client answered keepalives.
func TestClientIdleTimeout(t *testing.T) {
	const timeout = 400 * time.Millisecond
	defer intercept.SetClientIdleTimeout(timeout)()

	t.Run("cleartext", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstreamTCP(nil)
		c, sv := r.connectTCP(upEnd, httpDest)
		h := newHTTPClient(t, c)
		if resp, _ := h.do("GET /a HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		wantIdleClosed(t, h.br, time.Now(), timeout)
		sv.waitDoneOnce(t)
		if recs := r.records(); len(recs) != 1 || recs[0].Result != "ok" {
			t.Fatalf("records %+v; want the request's alone", recs)
		}
	})
	t.Run("bumped http/1.1", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstreamTCP(r.upLeaf("www.example.test"), "http/1.1")
		c, sv := r.connectTCP(upEnd, tlsDest)
		tc := bumpClient(t, r, c, "www.example.test", "http/1.1")
		h := newHTTPClient(t, tc)
		for _, path := range []string{"/a", "/b"} { // a wait shorter than the timeout is no idleness
			if resp, _ := h.do("GET " + path + " HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			time.Sleep(timeout / 2)
		}
		wantIdleClosed(t, h.br, time.Now().Add(-timeout/2), timeout)
		sv.waitDoneOnce(t)
		wantIdleRecord(t, r)
	})
	t.Run("bumped, no request", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := r.startUpstreamTCP(r.upLeaf("www.example.test"), "http/1.1")
		c, sv := r.connectTCP(upEnd, tlsDest)
		tc := bumpClient(t, r, c, "www.example.test", "http/1.1")
		wantIdleClosed(t, tc, time.Now(), timeout)
		sv.waitDoneOnce(t)
		wantIdleRecord(t, r)
	})
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2c", true: "bumped h2"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			var c net.Conn
			var sv *served
			scheme := "http"
			if bumped {
				upEnd, _ := r.startUpstreamTCP(r.upLeaf("www.example.test"), "h2")
				tcp, s := r.connectTCP(upEnd, tlsDest)
				c, sv, scheme = bumpClient(t, r, tcp, "www.example.test", "h2"), s, "https"
			} else {
				upEnd, _ := r.startUpstreamTCP(nil)
				c, sv = r.connectTCP(upEnd, httpDest)
			}
			c.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(c, http2.ClientPreface)
			fr := http2.NewFramer(c, c)
			fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			fr.WriteSettings()
			if err := h2Request(fr, 1, scheme, "/a"); err != nil {
				t.Fatal(err)
			}
			var start time.Time
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("no GOAWAY: %v", err)
				}
				if f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream) {
					start = time.Now() // the response is whole
				}
				if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
					fr.WriteSettingsAck()
				}
				if ga, ok := f.(*http2.GoAwayFrame); ok {
					if start.IsZero() || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
						t.Fatalf("GOAWAY %v, last stream %d, response whole: %v", ga.ErrCode, ga.LastStreamID, !start.IsZero())
					}
					break
				}
			}
			wantIdleClosed(t, c, start, timeout)
			sv.waitDoneOnce(t)
			if bumped {
				wantIdleRecord(t, r)
			}
		})
	}
}

// slowOrigin serves HTTP on a loopback connection, with TLS and protos
// when cert is set, and returns the interceptor's end: /poll answers
// after wait, /stream sends a byte every wait/4, eight in all.
func slowOrigin(t *testing.T, r *rig, cert *tls.Certificate, wait time.Duration, protos ...string) net.Conn {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	var conn net.Conn = serverEnd
	if cert != nil {
		conn = tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: protos})
	}
	srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/poll":
			time.Sleep(wait)
			io.WriteString(w, "polled")
		case "/stream":
			for i := range 8 {
				fmt.Fprint(w, i)
				w.(http.Flusher).Flush()
				time.Sleep(wait / 4)
			}
		}
	})}
	go srv.Serve(newOneConnListener(conn))
	t.Cleanup(func() { srv.Close(); serverEnd.Close() })
	return proxyEnd
}

// A request under way is no idleness, however long it lasts: a long poll,
// a download that trickles, a WebSocket tunnel quiet for longer than the
// idle timeout, an HTTP/2 stream still open, all outlast it.
func TestClientIdleTimeoutSparesRequests(t *testing.T) {
	const timeout = 300 * time.Millisecond
	defer intercept.SetClientIdleTimeout(timeout)()
	const wait = 3 * timeout

	t.Run("http/1.1", func(t *testing.T) {
		r := newRig(t, testPolicy)
		c, _ := r.connectTCP(slowOrigin(t, r, nil, wait), httpDest)
		h := newHTTPClient(t, c)
		for path, want := range map[string]string{"/poll": "polled", "/stream": "01234567"} {
			if resp, body := h.do("GET " + path + " HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); resp.StatusCode != 200 || body != want {
				t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
			}
		}
	})
	for _, bumped := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2c", true: "bumped h2"}[bumped], func(t *testing.T) {
			r := newRig(t, testPolicy)
			var c net.Conn
			if bumped {
				tcp, _ := r.connectTCP(slowOrigin(t, r, r.upLeaf("www.example.test"), wait, "h2"), tlsDest)
				c = bumpClient(t, r, tcp, "www.example.test", "h2")
			} else {
				c, _ = r.connectTCP(slowOrigin(t, r, nil, wait), httpDest)
			}
			c.SetDeadline(time.Now().Add(waitLimit))
			cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			scheme := map[bool]string{false: "http", true: "https"}[bumped]
			for path, want := range map[string]string{"/poll": "polled", "/stream": "01234567"} {
				req, _ := http.NewRequest("GET", scheme+"://www.example.test"+path, nil)
				resp, err := cc.RoundTrip(req)
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(body) != want {
					t.Fatalf("%s: %q, %v", path, body, err)
				}
			}
		})
	}
	t.Run("websocket", func(t *testing.T) {
		r := newRig(t, testPolicy)
		upEnd, _ := rawUpgradeUpstream(t)
		c, _ := r.connectTCP(upEnd, httpDest)
		c.SetDeadline(time.Now().Add(waitLimit))
		io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		time.Sleep(wait)
		io.WriteString(c, "ping")
		got := make([]byte, 4)
		if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
			t.Fatalf("the tunnel after a quiet spell: %q, %v", got, err)
		}
	})
}

// An h2c client that sends its preface and SETTINGS, then nothing, is
// closed for idleness; its http record keeps the decision that let the
// connection in, rule and policy both (records.md: policy is the one
// whose rule rule is). Before, the policy was left out.
func TestClientIdleH2cRecordPolicy(t *testing.T) {
	defer intercept.SetClientIdleTimeout(300 * time.Millisecond)()
	r := newRig(t, testPolicy)
	upEnd, _ := r.startUpstreamTCP(nil)
	c, sv := r.connectTCP(upEnd, httpDest)
	c.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(c, http2.ClientPreface)
	http2.NewFramer(c, c).WriteSettings()
	io.Copy(io.Discard, c) // until the appliance closes
	sv.waitDoneOnce(t)
	recs := ofKind(r.records(), "http")
	if len(recs) != 1 {
		t.Fatalf("http records %+v, want one", recs)
	}
	if rec := recs[0]; rec.Rule != "default" || rec.Policy != r.pol.ID() || rec.Policy == "" ||
		rec.Result != "ok" || !strings.Contains(rec.Error, "no request for") {
		t.Errorf("record rule %q policy %q result %s error %q; want rule default, policy %q, ok, no request",
			rec.Rule, rec.Policy, rec.Result, rec.Error, r.pol.ID())
	}
}
