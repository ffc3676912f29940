package intercept_test

// A raw HTTP/2 client on a bumped connection, and an HTTP/2 origin, for
// the tests that need frames net/http would not send (h2upconns_test.go,
// h2zerowindow_test.go).

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// probeOrigin is an HTTP/2 origin (x/net server) for probes: by path
//
//	/live...: a head and a byte at once, then nothing until stop
//	/hang...: nothing (no head) until stop
//	/ok...:   200 "ok" at once
//	/slowbody...: reads nothing of the request body, no head, until stop
type probeOrigin struct {
	stop     chan struct{}
	arrived  atomic.Int64
	cur      atomic.Int64
	byPath   sync.Map // path -> struct{}
	handlers atomic.Int64
}

func startProbeOrigin(t *testing.T, r *rig, c net.Conn) *probeOrigin {
	o := &probeOrigin{stop: make(chan struct{})}
	t.Cleanup(func() { close(o.stop) })
	o.serve(r, c)
	return o
}

// serve serves c, one more connection to o.
func (o *probeOrigin) serve(r *rig, c net.Conn) {
	tc := tls.Server(c, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		o.arrived.Add(1)
		o.cur.Add(1)
		defer o.cur.Add(-1)
		o.byPath.Store(req.URL.Path, struct{}{})
		p := req.URL.Path
		switch {
		case strings.HasPrefix(p, "/live"):
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
		case strings.HasPrefix(p, "/ok"):
			w.Write([]byte("ok"))
			return
		}
		select {
		case <-o.stop:
		case <-req.Context().Done():
		}
	})
	go func() {
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		(&http2.Server{MaxConcurrentStreams: 1000}).ServeConn(tc, &http2.ServeConnOpts{Handler: handler})
	}()
}

func (o *probeOrigin) has(path string) bool { _, ok := o.byPath.Load(path); return ok }

// probeClient is a raw HTTP/2 client on a bumped connection.
type probeClient struct {
	t       *testing.T
	c       net.Conn
	scheme  string
	auth    string
	mu      sync.Mutex
	fr      *http2.Framer
	hb      bytes.Buffer
	enc     *hpack.Encoder
	next    uint32
	smu     sync.Mutex
	stat    map[uint32]string // stream -> status, or "RST:code"
	ended   map[uint32]bool   // streams the server ended (END_STREAM)
	goneA   atomic.Value      // GOAWAY debug
	goAways []probeGoAway     // every GOAWAY, in order, under smu
	dead    chan struct{}
}

// probeGoAway is a GOAWAY the probe client got.
type probeGoAway struct {
	code  http2.ErrCode
	last  uint32
	debug string
}

func (g probeGoAway) String() string { return fmt.Sprintf("%v last %d %q", g.code, g.last, g.debug) }

// goAwaysGot returns the GOAWAYs the client got so far.
func (pc *probeClient) goAwaysGot() []probeGoAway {
	pc.smu.Lock()
	defer pc.smu.Unlock()
	return slices.Clone(pc.goAways)
}

func newProbeClient(t *testing.T, r *rig) (*probeClient, *probeOrigin) {
	upEnd, originEnd := testnet.TCPPair(t)
	o := startProbeOrigin(t, r, originEnd)
	// Streams that come while the first upstream connection is being
	// taken up (before net/http has it in its pool) each have net/http
	// dial one of its own: it cannot know the connection will be shared
	// until it is. The destination answers those dials (and net/http
	// closes, or shares, what they bring); a rig that refused them had
	// such a stream answered 502, "no further upstream connection", and
	// never reach the origin. So the rig answers as many as may come at
	// once, each with a connection to the same origin.
	for range maxUpstreamConns - 1 {
		spareUp, spareOrigin := testnet.TCPPair(t)
		o.serve(r, spareOrigin)
		r.offerRedial(spareUp)
	}
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	tlsc.SetDeadline(time.Now().Add(60 * time.Second))
	return newProbeClientOn(t, tlsc, "https"), o
}

// probeInitialWindow is the SETTINGS_INITIAL_WINDOW_SIZE the next probe
// client sends.
var probeInitialWindow uint32 = 1 << 20

func newProbeClientOn(t *testing.T, c net.Conn, scheme string) *probeClient {
	pc := &probeClient{t: t, c: c, scheme: scheme, auth: "www.example.test", next: 1, stat: map[uint32]string{}, ended: map[uint32]bool{}, dead: make(chan struct{})}
	pc.fr = http2.NewFramer(c, nil)
	pc.enc = hpack.NewEncoder(&pc.hb)
	pc.mu.Lock()
	go pc.readLoop() // before writing: a pipe has no buffer
	c.Write([]byte(http2.ClientPreface))
	pc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: probeInitialWindow})
	pc.fr.WriteWindowUpdate(0, 1<<30)
	pc.mu.Unlock()
	t.Cleanup(func() { c.Close() })
	return pc
}

func (pc *probeClient) readLoop() {
	defer close(pc.dead)
	rd := http2.NewFramer(io.Discard, pc.c)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			pc.smu.Lock()
			if s := f.PseudoValue("status"); s != "" {
				if _, ok := pc.stat[f.StreamID]; !ok {
					pc.stat[f.StreamID] = s
				}
			}
			if f.StreamEnded() {
				pc.ended[f.StreamID] = true
			}
			pc.smu.Unlock()
		case *http2.DataFrame:
			if f.StreamEnded() {
				pc.smu.Lock()
				pc.ended[f.StreamID] = true
				pc.smu.Unlock()
			}
		case *http2.RSTStreamFrame:
			pc.smu.Lock()
			if _, ok := pc.stat[f.StreamID]; !ok {
				pc.stat[f.StreamID] = "RST:" + f.ErrCode.String()
			}
			pc.smu.Unlock()
		case *http2.GoAwayFrame:
			pc.goneA.Store(f.ErrCode.String() + " " + string(f.DebugData()))
			pc.smu.Lock()
			pc.goAways = append(pc.goAways, probeGoAway{f.ErrCode, f.LastStreamID, string(f.DebugData())})
			pc.smu.Unlock()
		case *http2.SettingsFrame:
			if !f.IsAck() {
				pc.mu.Lock()
				pc.fr.WriteSettingsAck()
				pc.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				pc.mu.Lock()
				pc.fr.WritePing(true, f.Data)
				pc.mu.Unlock()
			}
		}
	}
}

// open opens a stream: GET (or POST when body) of path; endStream false
// leaves the request body open.
func (pc *probeClient) open(method, path string, endStream bool, extra ...hpack.HeaderField) uint32 {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	id := pc.next
	pc.next += 2
	pc.hb.Reset()
	for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":scheme", Value: pc.scheme},
		{Name: ":authority", Value: pc.auth}, {Name: ":path", Value: path}}, extra...) {
		pc.enc.WriteField(f)
	}
	pc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: pc.hb.Bytes(), EndStream: endStream, EndHeaders: true})
	return id
}

func (pc *probeClient) data(id uint32, b []byte, end bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.fr.WriteData(id, end, b)
}

func (pc *probeClient) reset(id uint32) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.fr.WriteRSTStream(id, http2.ErrCodeCancel)
}

func (pc *probeClient) status(id uint32) string {
	pc.smu.Lock()
	defer pc.smu.Unlock()
	return pc.stat[id]
}

// streamEnded reports whether the server ended stream id (END_STREAM).
func (pc *probeClient) streamEnded(id uint32) bool {
	pc.smu.Lock()
	defer pc.smu.Unlock()
	return pc.ended[id]
}

func (pc *probeClient) statuses() map[string]int {
	pc.smu.Lock()
	defer pc.smu.Unlock()
	m := map[string]int{}
	for _, s := range pc.stat {
		m[s]++
	}
	return m
}

func waitFor(t *testing.T, what string, d time.Duration, f func() bool) bool {
	t.Helper()
	for end := time.Now().Add(d); !f(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			t.Logf("timed out waiting for %s", what)
			return false
		}
	}
	return true
}

// handlerGoroutines counts goproxy's HTTP/2 stream handlers running.
func handlerGoroutines() int {
	buf := make([]byte, 64<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "goproxy.(*ProxyHttpServer).handleH2MitmStream(")
}

// openAuth opens a bodiless GET of path for authority.
func (pc *probeClient) openAuth(authority, path string) uint32 {
	pc.mu.Lock()
	old := pc.auth
	pc.auth = authority
	pc.mu.Unlock()
	id := pc.open("GET", path, true)
	pc.mu.Lock()
	pc.auth = old
	pc.mu.Unlock()
	return id
}

func (pc *probeClient) window(id uint32, n uint32) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.fr.WriteWindowUpdate(id, n)
}

// runHandlers counts x/net server stream handler goroutines (goproxy's
// handler may have returned while the server flushes its end).
func runHandlers() int {
	buf := make([]byte, 64<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "http2.(*serverConn).runHandler(")
}

// connEnded reports whether the client's connection has ended (its reader got
// an error or EOF).
func (pc *probeClient) connEnded() bool {
	select {
	case <-pc.dead:
		return true
	default:
		return false
	}
}
