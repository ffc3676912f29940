package proxy

import (
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// endSink is an intercept.Plaintext whose streams list how they end.
type endSink struct {
	mu      sync.Mutex
	streams []*endStream
}

func (p *endSink) OpenPlaintext(intercept.PlaintextFlow) intercept.PlaintextStream {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &endStream{}
	p.streams = append(p.streams, s)
	return s
}

// ends returns the one stream's ends, once it is closed.
func (p *endSink) ends(t *testing.T) []string {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		streams := slices.Clone(p.streams)
		p.mu.Unlock()
		if len(streams) > 1 {
			t.Fatalf("%d plaintext streams, want 1", len(streams))
		}
		if len(streams) == 1 {
			if ev := streams[0].get(); slices.Contains(ev, "Close") {
				return ev
			}
		}
	}
	t.Fatal("the plaintext stream was not closed")
	return nil
}

type endStream struct {
	mu     sync.Mutex
	events []string
}

func (s *endStream) ev(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

func (s *endStream) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

func (s *endStream) FromClient([]byte) {}
func (s *endStream) FromServer([]byte) {}
func (s *endStream) ClientClosed()     { s.ev("ClientClosed") }
func (s *endStream) ServerClosed()     { s.ev("ServerClosed") }
func (s *endStream) ClientReset()      { s.ev("ClientReset") }
func (s *endStream) ServerReset()      { s.ev("ServerReset") }
func (s *endStream) Close()            { s.ev("Close") }

// TestPlaintextOfClientBrokenUnderWay: a bumped HTTP/1 client resets its
// connection, or vanishes, while its request waits on a silent
// destination. The client watch aborts the session; the IDS plaintext
// ends with the client's RST (docs/ids.md), never its FIN: the reader,
// woken by the Abort, read the end of the stream and the plaintext showed
// the client closing cleanly, while the record said reset (timeout).
func TestPlaintextOfClientBrokenUnderWay(t *testing.T) {
	for _, vanish := range []bool{false, true} {
		name := map[bool]string{false: "reset", true: "vanish"}[vanish]
		t.Run(name, func(t *testing.T) {
			for range 3 {
				plaintextOfClientBreak(t, vanish)
			}
		})
	}
}

func plaintextOfClientBreak(t *testing.T, vanish bool) {
	t.Helper()
	sink := &endSink{}
	got := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	o := bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour, plaintext: sink,
		handler: func(_ *bumpStallRig, _ http.ResponseWriter, req *http.Request) {
			got <- struct{}{}
			select {
			case <-release:
			case <-req.Context().Done():
			}
		}}
	if vanish {
		o.tcp = netstack.TCPOptions{KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2}
	}
	r := newBumpRig(t, o)
	rc, c := r.dialRawTLS(t, "http/1.1")
	if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the destination")
	}
	if vanish {
		r.client.SetTap(func([]byte) bool { return true })
	} else {
		rc.reset()
	}
	rec, ok := r.tlsRecord(t, 8*time.Second)
	if !ok {
		t.Fatal("no tls record")
	}
	ev := sink.ends(t)
	if !slices.Contains(ev, "ClientReset") || slices.Contains(ev, "ClientClosed") {
		t.Errorf("record %s %q; the plaintext ends %v, want the client's RST and no FIN", rec.Result, rec.Error, ev)
	}
}

// TestPlaintextOfApplianceAbortNoClientReset: the appliance's own reset of
// a bumped session (the write-stall watch's: the client stops reading a
// download) is not the client's abort; the plaintext ends with FINs, not
// the client's RST, since the client broke nothing.
func TestPlaintextOfApplianceAbortNoClientReset(t *testing.T) {
	sink := &endSink{}
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: 500 * time.Millisecond, plaintext: sink,
		handler: func(r *bumpStallRig, w http.ResponseWriter, req *http.Request) { r.flood(w, req) }})
	r.get(t) // the client reads no more
	rec, ok := r.tlsRecord(t, 10*time.Second)
	if !ok {
		t.Fatal("no tls record")
	}
	if rec.Result != "stalled" {
		t.Fatalf("the session ended %s %q, want stalled", rec.Result, rec.Error)
	}
	if ev := sink.ends(t); slices.Contains(ev, "ClientReset") {
		t.Errorf("the appliance's own reset shown as the client's RST: the plaintext ends %v", ev)
	}
}

// TestPlaintextOfStalledSession: a bumped client that stops reading a
// download has its session reset by the appliance a write-stall timeout
// later; the IDS plaintext ends with the destination's side's RST, as the
// client saw it, not with FINs, which said the session closed cleanly.
func TestPlaintextOfStalledSession(t *testing.T) {
	sink := &endSink{}
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Second, plaintext: sink,
		handler: (*bumpStallRig).flood})
	_, br := r.get(t)
	if _, err := io.ReadFull(br, make([]byte, 1<<20)); err != nil { // the window opens, then shuts
		t.Fatal(err)
	}
	rec, ok := r.tlsRecord(t, 20*time.Second)
	if !ok {
		t.Fatal("the stalled session was never recorded")
	}
	r.checkStalled(t, rec, "client")
	if ev := sink.ends(t); !slices.Equal(ev, []string{"ServerReset", "Close"}) {
		t.Errorf("the plaintext stream ended with %v, want the appliance's reset", ev)
	}
}
