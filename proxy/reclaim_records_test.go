package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// reclaimAndRecords opens flows connections from one client with open,
// each served as far as it goes once open returns, sets memory critical
// until the stack has reset the newest connections past what sixteen new
// connections hold, waits for the records of kinds each reset connection
// writes, and checks every record written since: result reset, the
// reclaim's error, and nothing blaming the client.
func reclaimAndRecords(t *testing.T, r *stallRig, kinds []string, open func()) {
	const flows, share = 20, netstack.CriticalMemoryClientFlows
	for range flows {
		open()
	}
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
	var all []records.Record
	complete := func() bool {
		all = r.sink.parse(t)[before:]
		for _, k := range kinds {
			if countKind(all, k) < flows-share {
				return false
			}
		}
		return true
	}
	waitUntil(t, 5*time.Second, complete, "the reset connections' records")
	var recs []string
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

// countKind is how many of recs are of kind.
func countKind(recs []records.Record, kind string) int {
	n := 0
	for _, rec := range recs {
		if rec.Kind == kind {
			n++
		}
	}
	return n
}

// waitUntil polls cond until it holds, failing t with what after d.
func waitUntil(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("waited %v for %s", d, what)
		}
	}
}

// TestReclaimRecordsWaitingForFirstBytes: connections reset while the
// proxy waits for their first bytes (to classify them) are recorded as
// reclaimed, not as "operation aborted", a client's reset.
func TestReclaimRecordsWaitingForFirstBytes(t *testing.T) {
	r := newStallRig(t, 15*time.Minute)
	var dialled atomic.Int64 // the appliance's connections to the destination
	dst := destination0(t, func(c *net.TCPConn) { dialled.Add(1); _, _ = io.Copy(io.Discard, c) })
	opened := int64(0)
	reclaimAndRecords(t, r, []string{"tcp"}, func() {
		r.dial0(t, dst)
		opened++
		waitUntil(t, 5*time.Second, func() bool { return dialled.Load() == opened }, "the appliance's dial")
	})
}

// TestReclaimRecordsHTTPLongPoll: cleartext HTTP requests waiting on an
// origin that does not answer; the session and request records say the
// appliance reset them, not that the client's connection broke.
func TestReclaimRecordsHTTPLongPoll(t *testing.T) {
	r := newStallRig(t, 15*time.Minute)
	dst, got, _ := silentOrigin(t, "")
	reclaimAndRecords(t, r, []string{"http"}, func() {
		c := r.dial0(t, dst)
		_, _ = io.WriteString(c, "GET /poll HTTP/1.1\r\nHost: plain.example\r\n\r\n")
		wait(t, got, 5*time.Second, "the origin never got the request")
	})
}

// TestReclaimRecordsBumpedIdle: bumped HTTP/1 sessions idle between
// requests end when goproxy's read of the next request fails, often before
// the client watch's Abort: their tls records said ok.
func TestReclaimRecordsBumpedIdle(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hi")
	})
	opened := 0
	reclaimAndRecords(t, r.stallRig, []string{"tls"}, func() {
		r.answeredOnce(t)
		// Idle once the request's record is out: goproxy reads the next.
		opened++
		waitUntil(t, 5*time.Second, func() bool { return countKind(r.sink.parse(t), "http") == opened }, "the first request's record")
	})
}

// TestReclaimRecordsBumpedPoll: bumped requests waiting on an origin that
// does not answer.
func TestReclaimRecordsBumpedPoll(t *testing.T) {
	var polling atomic.Int64 // requests the origin holds
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, _ http.ResponseWriter, req *http.Request) {
		polling.Add(1)
		<-req.Context().Done()
	})
	opened := int64(0)
	reclaimAndRecords(t, r.stallRig, []string{"http", "tls"}, func() {
		r.bumpedGet(t, "/poll")
		opened++
		waitUntil(t, 5*time.Second, func() bool { return polling.Load() == opened }, "the request at the origin")
	})
}
