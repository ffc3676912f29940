package intercept_test

import (
	"crypto/tls"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// gatedConn is a destination's end of its connection whose reads wait,
// once armed, until gate is closed: the appliance's writes to it (over
// net.Pipe) wait as long.
type gatedConn struct {
	net.Conn
	armed atomic.Bool
	gate  chan struct{}
}

func (c *gatedConn) Read(b []byte) (int, error) {
	if c.armed.Load() {
		<-c.gate
	}
	return c.Conn.Read(b)
}

// TestH2StreamsWaitForFirstConnection: an HTTP/2 client's second stream
// that comes while the session's first upstream connection, HTTP/2 from
// its handshake, is being taken up is carried on it, with no dial of its
// own. net/http knows a connection is shared only once it has it, and
// dials for each request that comes before then; those dials cost the
// destination a TCP and TLS handshake each (closed unused at once), and
// one that failed had its stream answered 502 though the first
// connection was about to carry it. The destination here holds the
// appliance's HTTP/2 preface (its reads wait) until the second stream is
// in the transport, so the first connection is not yet net/http's.
//
// The destination holds the take-up for as long as the test takes to see
// the second stream in the transport, which the take-up's bound
// (firstTakeUpWait, 1 s) did not cover under load: past it, the second
// stream's dial went ahead and was refused (502, one more dial). The bound
// is lengthened here so that only the first connection ends the wait.
func TestH2StreamsWaitForFirstConnection(t *testing.T) {
	defer intercept.SetFirstTakeUpWait(time.Minute)()
	r := newRig(t, testPolicy)
	upEnd, pipeEnd := net.Pipe()
	originEnd := &gatedConn{Conn: pipeEnd, gate: make(chan struct{})}
	opened := false
	defer func() {
		if !opened {
			close(originEnd.gate)
		}
	}()
	tc := tls.Server(originEnd, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	go func() {
		if err := tc.Handshake(); err != nil {
			pipeEnd.Close()
			return
		}
		originEnd.armed.Store(true)
		(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte("ok"))
		})})
	}()
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	tlsc.SetDeadline(time.Now().Add(60 * time.Second))
	pc := newProbeClientOn(t, tlsc, "https")
	s1 := pc.open("GET", "/ok/1", true)
	// The first stream's dial takes the first connection, whose take-up
	// waits on the destination; the second stream's comes while it does.
	if !waitFor(t, "the first connection's take-up", 10*time.Second, func() bool { return originEnd.armed.Load() && goroutinesIn("(*http2Transport).newClientConn(") > 0 }) {
		t.Fatal("the first stream's dial did not take up the first connection")
	}
	s2 := pc.open("GET", "/ok/2", true)
	// The second stream is in the transport: dialled (and refused: the
	// rig has no other connection), or waiting for the first connection.
	waitFor(t, "the second stream's dial, or its wait", 10*time.Second, func() bool {
		return r.dials.Load() > 0 || goroutinesIn("intercept.(*firstTakeUp).wait(") > 0
	})
	opened = true
	close(originEnd.gate)
	if !waitFor(t, "both streams' END_STREAM", 10*time.Second, func() bool { return pc.streamEnded(s1) && pc.streamEnded(s2) }) {
		t.Errorf("statuses %v", pc.statuses())
	}
	if st1, st2 := pc.status(s1), pc.status(s2); st1 != "200" || st2 != "200" {
		t.Errorf("statuses %q and %q, want 200 each", st1, st2)
	}
	if n := r.dials.Load(); n != 0 {
		t.Errorf("%d more upstream connections dialled (%v), want none: the first carries both streams", n, r.dialed())
	}
}

// goroutinesIn counts the goroutines whose stack has fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 64<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), fn)
}
