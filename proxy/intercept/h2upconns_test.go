package intercept_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// maxUpstreamConns is intercept's bound on one session's upstream
// connections.
const maxUpstreamConns = 8

// pingOrigin is an HTTP/2 origin that allows one stream a connection and
// answers none but /ok (200 at once); it acks PINGs only when ackPings.
// It counts the connections it holds open, and their peak; app counts
// them where the appliance opens and closes them.
type pingOrigin struct {
	ln       net.Listener
	ackPings bool
	accepted atomic.Int64
	open     atomic.Int64
	peak     atomic.Int64
	streams  atomic.Int64 // HEADERS seen
	app      openCount
}

// startPingOrigin starts o and a rig whose every upstream dial goes to it.
func startPingOrigin(t *testing.T, ackPings bool) (*pingOrigin, *rig) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	o := &pingOrigin{ln: ln, ackPings: ackPings}
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		c.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
			if err != nil {
				return nil, err
			}
			return o.app.track(c), nil
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go o.serve(c, r)
		}
	}()
	return o, r
}

func (o *pingOrigin) serve(c net.Conn, r *rig) {
	o.accepted.Add(1)
	n := o.open.Add(1)
	defer o.open.Add(-1)
	for p := o.peak.Load(); n > p && !o.peak.CompareAndSwap(p, n); p = o.peak.Load() {
	}
	defer c.Close()
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"h2"}})
	if tc.Handshake() != nil {
		return
	}
	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(tc, pre); err != nil {
		return
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			o.streams.Add(1)
			if f.PseudoValue("path") == "/ok" {
				hb.Reset()
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
			}
		case *http2.PingFrame:
			if o.ackPings && !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		}
	}
}

// TestH2PendingResetsHoldUpstreamSlots: net/http's HTTP/2 client counts a
// stream it reset against its connection until the origin acks a PING.
// An origin of the client's own that never acks one leaves each such
// connection full: net/http takes it out of its pool (and out of
// MaxConnsPerHost's count) but keeps it open, and the next stream dials
// anew. The review's probe had one client connection hold 81 upstream
// connections in 4 s. The session holds at most maxUpstreamConns open at
// once, and closes those whose origin leaves a PING unanswered (and, while
// a stream waits for a connection, those with no stream left:
// idleslots.go). They are counted where the appliance opens and closes
// them: closed and dialled anew at the dial pace, they would be counted
// one too many where the origin sees them, its read of a closed one not
// yet ended.
func TestH2PendingResetsHoldUpstreamSlots(t *testing.T) {
	defer intercept.SetUpstreamH2PingTimeouts(shortPingInterval, 10*time.Second)() // none closed in 3 s
	o, r := startPingOrigin(t, false)
	pc := bumpedTo(t, r, o)
	resets := resetLoop(pc, o, 3*time.Second, false)
	t.Logf("%d resets: origin accepted %d upstream connections, at most %d open at once (%d as the origin saw them), %d open now; statuses %v",
		resets, o.accepted.Load(), o.app.peak.Load(), o.peak.Load(), o.open.Load(), pc.statuses())
	if p := o.app.peak.Load(); p > maxUpstreamConns {
		t.Errorf("one client connection held %d upstream connections at once (maxUpstreamConns %d)", p, maxUpstreamConns)
	}
}

// TestH2SilentOriginConnsClosedByPing: the connections such an origin
// fills are closed once a PING goes unanswered, so their slots go to
// later streams rather than wait for the session's end.
func TestH2SilentOriginConnsClosedByPing(t *testing.T) {
	defer intercept.SetUpstreamH2PingTimeouts(150*time.Millisecond, 150*time.Millisecond)()
	o, r := startPingOrigin(t, false)
	pc := bumpedTo(t, r, o)
	resets := resetLoop(pc, o, 2*time.Second, false)
	closed := waitFor(t, "the upstream connections to close", 5*time.Second, func() bool { return o.open.Load() == 0 })
	t.Logf("%d resets: origin accepted %d upstream connections, at most %d open at once, %d open now",
		resets, o.accepted.Load(), o.peak.Load(), o.open.Load())
	if n := o.accepted.Load(); n <= maxUpstreamConns {
		t.Errorf("origin accepted %d upstream connections in 2 s: later streams never got one of the %d", n, maxUpstreamConns)
	}
	if !closed {
		t.Errorf("%d upstream connections still open with PINGs unanswered", o.open.Load())
	}
}

// TestH2ResetsToPingingOriginServed: the same resets to an origin that
// acks PINGs leave its connections usable, and a request after them is
// served. Each is padded with a request the origin serves, which keeps
// them under the Rapid Reset guard's half of the streams served.
func TestH2ResetsToPingingOriginServed(t *testing.T) {
	defer intercept.SetUpstreamH2PingTimeouts(shortPingInterval, 10*time.Second)()
	o, r := startPingOrigin(t, true)
	pc := bumpedTo(t, r, o)
	resets := resetLoop(pc, o, 2*time.Second, true)
	id := pc.open("GET", "/ok", true)
	served := waitFor(t, "the answer to /ok", 10*time.Second, func() bool { return pc.status(id) != "" })
	t.Logf("%d resets: origin accepted %d upstream connections, at most %d open at once (%d as the origin saw them); /ok: %q",
		resets, o.accepted.Load(), o.app.peak.Load(), o.peak.Load(), pc.status(id))
	if !served || pc.status(id) != "200" {
		t.Errorf("a request after the resets got %q, want 200", pc.status(id))
	}
	if p := o.app.peak.Load(); p > maxUpstreamConns {
		t.Errorf("one client connection held %d upstream connections at once (maxUpstreamConns %d)", p, maxUpstreamConns)
	}
}

// bumpedTo returns a raw HTTP/2 client on a connection bumped to o.
func bumpedTo(t *testing.T, r *rig, o *pingOrigin) *probeClient {
	first, err := net.Dial("tcp", o.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := r.connectTCP(o.app.track(first), tlsDest)
	tlsc := bumpClient(t, r, c, "www.example.test", "h2")
	tlsc.SetDeadline(time.Now().Add(60 * time.Second))
	return newProbeClientOn(t, tlsc, "https")
}

// resetLoop opens streams for d, each reset once o has it (or 300 ms
// on), each padded with a denied stream, or with served a request for
// /ok; it returns how many it reset. With denied pads it stops at the
// Rapid Reset guard's bound, 100 resets before their answer: a stream the
// appliance answered itself is not one it served (h2guard.go), so one more
// would be refused.
func resetLoop(pc *probeClient, o *pingOrigin, d time.Duration, served bool) int {
	const guardBound = 100
	var resets int
	for start := time.Now(); time.Since(start) < d && (served || resets < guardBound); resets++ {
		before := o.streams.Load()
		id := pc.open("GET", fmt.Sprintf("/r%d", resets), true)
		// Once the slots are full, a stream waits for one: it is reset
		// unseen.
		for end := time.Now().Add(300 * time.Millisecond); o.streams.Load() == before && pc.status(id) == "" && time.Now().Before(end); {
			time.Sleep(2 * time.Millisecond)
		}
		if served {
			pc.open("GET", "/ok", true)
		} else {
			pc.openAuth("evil.example.test", "/pad")
		}
		pc.reset(id)
	}
	return resets
}
