package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// reclaimAndRecords opens flows connections from one client with open,
// sets memory critical until the stack has reset the newest connections
// past what sixteen new connections hold, and checks every record written
// since: result reset, the reclaim's error, and nothing blaming the client.
func reclaimAndRecords(t *testing.T, r *stallRig, open func()) {
	const flows, share = 20, netstack.CriticalMemoryClientFlows
	for range flows {
		open()
	}
	time.Sleep(500 * time.Millisecond) // each is served as far as it goes
	before := len(r.sink.parse(t))
	r.ns.SetMemoryPressure(netstack.MemoryCritical)
	r.p.SetMemoryPressure(netstack.MemoryCritical)
	for end := time.Now().Add(5 * time.Second); r.ns.Stats().MemoryReclaimed < flows-share && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	r.ns.SetMemoryPressure(netstack.MemoryAmple)
	r.p.SetMemoryPressure(netstack.MemoryAmple)
	if got := r.ns.Stats().MemoryReclaimed; got != flows-share {
		t.Fatalf("memory_reclaimed %d, want %d", got, flows-share)
	}
	var recs []string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		all := r.sink.parse(t)[before:]
		conns := 0
		for _, rec := range all {
			if rec.Kind == "tcp" || rec.Kind == "tls" || rec.Kind == "http" {
				conns++
			}
		}
		if conns >= flows-share {
			break
		}
	}
	time.Sleep(300 * time.Millisecond) // any record still to come
	all := r.sink.parse(t)[before:]
	if len(all) < flows-share {
		t.Fatalf("%d records after the reclaim, want at least %d", len(all), flows-share)
	}
	for _, rec := range all {
		recs = append(recs, rec.Kind+" "+rec.Result+" "+rec.Error)
		if rec.Result != "reset" || !strings.Contains(rec.Error, netstack.ErrMemoryReclaimed.Error()) ||
			strings.Contains(rec.Error, "the client's connection broke") {
			t.Errorf("%s record: result %q, error %q; want reset, naming %q and not blaming the client",
				rec.Kind, rec.Result, rec.Error, netstack.ErrMemoryReclaimed)
		}
	}
	t.Logf("records: %q", recs)
}

// TestReclaimRecordsWaitingForFirstBytes: connections reset while the
// proxy waits for their first bytes (to classify them) are recorded as
// reclaimed, not as "operation aborted", a client's reset.
func TestReclaimRecordsWaitingForFirstBytes(t *testing.T) {
	r := newStallRig(t, 15*time.Minute)
	dst := destination0(t, func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) })
	reclaimAndRecords(t, r, func() { r.dial0(t, dst) })
}

// TestReclaimRecordsHTTPLongPoll: cleartext HTTP requests waiting on an
// origin that does not answer; the session and request records say the
// appliance reset them, not that the client's connection broke.
func TestReclaimRecordsHTTPLongPoll(t *testing.T) {
	r := newStallRig(t, 15*time.Minute)
	dst, _, _ := silentOrigin(t, "")
	reclaimAndRecords(t, r, func() {
		c := r.dial0(t, dst)
		_, _ = io.WriteString(c, "GET /poll HTTP/1.1\r\nHost: plain.example\r\n\r\n")
	})
}

// TestReclaimRecordsBumpedIdle: bumped HTTP/1 sessions idle between
// requests end when goproxy's read of the next request fails, often before
// the client watch's Abort: their tls records said ok.
func TestReclaimRecordsBumpedIdle(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hi")
	})
	reclaimAndRecords(t, r.stallRig, func() {
		tc := tls.Client(r.dial0(t, r.dest), &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = io.WriteString(tc, "GET /x HTTP/1.1\r\nHost: big.example\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatalf("reading the first response: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	})
}

// TestReclaimRecordsBumpedPoll: bumped requests waiting on an origin that
// does not answer.
func TestReclaimRecordsBumpedPoll(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, _ http.ResponseWriter, req *http.Request) {
		<-req.Context().Done()
	})
	reclaimAndRecords(t, r.stallRig, func() {
		tc := tls.Client(r.dial0(t, r.dest), &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = io.WriteString(tc, "GET /poll HTTP/1.1\r\nHost: big.example\r\n\r\n")
	})
}
