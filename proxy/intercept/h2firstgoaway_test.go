package intercept_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// r2Origin is a destination whose first connection misbehaves in one way
// (mode) and whose further connections are honest HTTP/2 servers.
type r2Origin struct {
	mode   string
	served atomic.Int32
	conns  atomic.Int32
	mu     sync.Mutex
	open   []net.Conn
}

func (o *r2Origin) closeAll() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, c := range o.open {
		c.Close()
	}
}

func (o *r2Origin) serve(r *rig, c net.Conn, first bool) {
	o.mu.Lock()
	o.open = append(o.open, c)
	o.mu.Unlock()
	tc := tls.Server(c, &tls.Config{
		Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"},
	})
	go func() {
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		o.conns.Add(1)
		if first {
			switch o.mode {
			case "goaway":
				r2Hostile(tc, nil, true)
				return
			case "mcs0":
				r2Hostile(tc, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 0}}, false)
				return
			case "close":
				tc.Close()
				return
			}
		}
		srv := &http2.Server{}
		if o.mode == "mcs1" {
			srv.MaxConcurrentStreams = 1
		}
		srv.ServeConn(tc, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			o.served.Add(1)
			if o.mode == "mcs1" {
				time.Sleep(50 * time.Millisecond)
			}
			w.Write([]byte("ok"))
		})})
	}()
}

// r2Hostile sends its SETTINGS (and a GOAWAY naming no stream) the moment
// the handshake is done, then keeps the connection open: it acks SETTINGS
// and PINGs, refuses any stream, and never closes.
func r2Hostile(tc *tls.Conn, settings []http2.Setting, goaway bool) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings(settings...)
	if goaway {
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	}
	if _, err := tc.Write(buf.Bytes()); err != nil {
		return
	}
	br := bufio.NewReader(tc)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil {
		return
	}
	rf := http2.NewFramer(tc, br)
	for {
		f, err := rf.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				rf.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				rf.WritePing(true, f.Data)
			}
		case *http2.HeadersFrame:
			rf.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
		}
	}
}

// r2Gated is an origin's end whose reads wait, once armed, for gate.
type r2Gated struct {
	net.Conn
	armed atomic.Bool
	gate  chan struct{}
}

func (c *r2Gated) Read(b []byte) (int, error) {
	if c.armed.Load() {
		<-c.gate
	}
	return c.Conn.Read(b)
}

// r2StacksWith counts the goroutines whose stack has fn.
func r2StacksWith(fn string) int {
	buf := make([]byte, 16<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), fn)
}

// TestH2FirstConnectionRefusingStreamsHoldsNoDial: the client's first
// stream has the session's first upstream connection dialled (its
// preface held by the origin) and is reset; the origin then answers
// with a GOAWAY naming no stream (or SETTINGS allowing none), keeping the
// connection open. No request ever gets that connection, and the dial of
// the client's next stream, waiting for the first connection's take-up
// (h2first.go), waited until the idle timer closed it, 90 s. It is
// served on a new connection at once, as before that wait existed.
func TestH2FirstConnectionRefusingStreamsHoldsNoDial(t *testing.T) {
	for _, mode := range []string{"goaway", "mcs0"} {
		t.Run(mode, func(t *testing.T) { firstConnectionRefusingStreams(t, mode) })
	}
}

func firstConnectionRefusingStreams(t *testing.T, mode string) {
	r := newRig(t, testPolicy)
	o := &r2Origin{mode: "normal"}
	t.Cleanup(o.closeAll)
	for range 24 {
		spareUp, spareOrigin := testnet.TCPPair(t)
		o.serve(r, spareOrigin, false)
		r.offerRedial(spareUp)
	}
	upEnd, pipeEnd := net.Pipe()
	g := &r2Gated{Conn: pipeEnd, gate: make(chan struct{})}
	gateOpen := false
	defer func() {
		if !gateOpen {
			close(g.gate)
		}
		pipeEnd.Close()
	}()
	tc := tls.Server(g, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"}})
	go func() {
		if err := tc.Handshake(); err != nil {
			return
		}
		g.armed.Store(true)
		var buf bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		if mode == "mcs0" {
			fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0})
		} else {
			fr.WriteSettings()
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		}
		go tc.Write(buf.Bytes()) // waits for the appliance's read loop
		br := bufio.NewReader(tc)
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(br, preface); err != nil {
			return
		}
		rf := http2.NewFramer(io.Discard, br)
		for {
			if _, err := rf.ReadFrame(); err != nil {
				return
			}
		}
	}()
	c, _ := r.connectTCP(upEnd, tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	tlsc.SetDeadline(time.Now().Add(60 * time.Second))
	cc, err := (&http2.Transport{}).NewClientConn(tlsc)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx1, cancel1 := context.WithCancel(context.Background())
	go func() {
		req, _ := http.NewRequestWithContext(ctx1, "GET", "https://www.example.test/first", nil)
		if resp, err := cc.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for r2StacksWith("newClientConn(") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first connection's take-up did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel1()
	time.Sleep(300 * time.Millisecond)
	gateOpen = true
	close(g.gate)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	var waiters int
	go func() {
		time.Sleep(3 * time.Second)
		waiters = r2StacksWith("intercept.(*firstTakeUp).wait(")
	}()
	req, _ := http.NewRequestWithContext(ctx2, "GET", "https://www.example.test/second", nil)
	resp, err := cc.RoundTrip(req)
	status := ""
	if err != nil {
		status = "err: " + err.Error()
	} else {
		status = resp.Status
		resp.Body.Close()
	}
	d := time.Since(start)
	if d > 3*time.Second || err != nil {
		t.Errorf("second stream: %s after %v (dials waiting for the first connection at 3 s: %d), want it served within 3 s", status, d.Round(time.Millisecond), waiters)
	}
}
