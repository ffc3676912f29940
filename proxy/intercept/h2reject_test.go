package intercept_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The requests the appliance's HTTP/2 server (x/net) answers 400 itself,
// with its words, and one it serves.
var h2Refusals = []struct {
	path   string
	fields []hpack.HeaderField
	why    string // "": served
}{
	{"/ok/connection", []hpack.HeaderField{{Name: "connection", Value: "close"}},
		`request header "Connection" is not valid in HTTP/2`},
	{"/ok/te", []hpack.HeaderField{{Name: "te", Value: "gzip"}},
		`request header "TE" may only be "trailers" in HTTP/2`},
	{"/ok/te-twice", []hpack.HeaderField{{Name: "te", Value: "trailers"}, {Name: "te", Value: "trailers"}},
		`request header "TE" may only be "trailers" in HTTP/2`},
	{"/ok/two", []hpack.HeaderField{{Name: "upgrade", Value: "h2c"}, {Name: "keep-alive", Value: "1"}},
		`request header "Keep-Alive" is not valid in HTTP/2`}, // x/net's order, not the block's
	{"/ok/trailers", []hpack.HeaderField{{Name: "te", Value: "trailers"}}, ""},
}

// TestH2ServerRefusalRecorded: a request x/net's server answers 400
// itself, before any handler of the appliance's runs (a
// connection-specific field, a te other than trailers), left no record
// (review records30 F3). Now it has a deny record with status 400 and
// x/net's words, its method, host and path, no rule (no policy decided
// it), drawn from the client's bucket of deny records; nothing reaches
// the destination, and the connection serves on.
func TestH2ServerRefusalRecorded(t *testing.T) {
	var asked atomic.Int32
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		c.DenyRecord = func(*records.Record) (bool, int) { asked.Add(1); return true, 0 }
	})
	pc, o := newProbeClient(t, r)
	ids := map[string]uint32{}
	for _, tc := range h2Refusals {
		ids[tc.path] = pc.open("GET", tc.path, true, append([]hpack.HeaderField{{Name: "user-agent", Value: "probe/1"}}, tc.fields...)...)
	}
	for _, tc := range h2Refusals {
		want := "400"
		if tc.why == "" {
			want = "200"
		}
		if !waitFor(t, tc.path+"'s answer", waitLimit, func() bool { return pc.streamEnded(ids[tc.path]) }) || pc.status(ids[tc.path]) != want {
			t.Errorf("%s: the client got %q, want %s", tc.path, pc.status(ids[tc.path]), want)
		}
		if got := o.has(tc.path); got != (tc.why == "") {
			t.Errorf("%s: reached the origin: %v", tc.path, got)
		}
	}
	good := pc.open("GET", "/ok/after", true)
	waitFor(t, "the next request's answer", waitLimit, func() bool { return pc.streamEnded(good) })
	pc.c.Close()
	onlyRecord(t, r, "tls") // the session's end: every request is recorded before it
	byPath := map[string]records.Record{}
	for _, rec := range ofKind(r.records(), "http") {
		if _, dup := byPath[rec.Path]; dup {
			t.Errorf("%s: two records", rec.Path)
		}
		byPath[rec.Path] = rec
	}
	for _, tc := range h2Refusals {
		rec, ok := byPath[tc.path]
		switch {
		case !ok:
			t.Errorf("%s: no record", tc.path)
		case tc.why == "":
			if rec.Action != "bump" || rec.Status != 200 || rec.Result != "ok" {
				t.Errorf("%s: record %s %d %s, want bump 200 ok", tc.path, rec.Action, rec.Status, rec.Result)
			}
		case rec.Action != "deny" || rec.Result != "denied" || rec.Status != 400 || rec.Rule != "" ||
			rec.Error != "refused by the appliance's HTTP/2 server: "+tc.why ||
			rec.Method != "GET" || rec.Host != "www.example.test" || rec.Scheme != "https" || rec.UserAgent != "probe/1" ||
			rec.BytesOut != 0 || rec.BytesIn != 0:
			t.Errorf("%s: record %+v, want a deny of GET www.example.test, status 400, error %q", tc.path, rec, tc.why)
		}
	}
	if _, ok := byPath["/ok/after"]; !ok {
		t.Error("the request after them has no record")
	}
	if n, want := asked.Load(), int32(len(h2Refusals)-1); n != want {
		t.Errorf("the deny bucket was asked %d times, want %d: once a refusal", n, want)
	}
}

// TestH2ServerRefusalBucketed: a client whose bucket of deny records is
// dry gets its refusals answered all the same, and unrecorded, as any
// other deny.
func TestH2ServerRefusalBucketed(t *testing.T) {
	r := newRig(t, testPolicy, func(c *intercept.Config) {
		c.DenyRecord = func(*records.Record) (bool, int) { return false, 0 }
	})
	pc, _ := newProbeClient(t, r)
	id := pc.open("GET", "/ok/bad", true, hpack.HeaderField{Name: "connection", Value: "close"})
	waitFor(t, "the answer", waitLimit, func() bool { return pc.streamEnded(id) })
	if s := pc.status(id); s != "400" {
		t.Errorf("the client got %q, want 400", s)
	}
	pc.c.Close()
	onlyRecord(t, r, "tls")
	if recs := ofKind(r.records(), "http"); len(recs) != 0 {
		t.Errorf("records %+v, want none: the bucket is dry", recs)
	}
}

// TestH2CServerRefusalRecorded: the same over cleartext HTTP/2 (h2c).
func TestH2CServerRefusalRecorded(t *testing.T) {
	r := newRig(t, testPolicy)
	proxyEnd, originEnd := testnet.TCPPair(t)
	o := startKeptOrigin(t, originEnd, "", "")
	c, sv := r.connectTCP(proxyEnd, httpDest)
	c.SetDeadline(time.Now().Add(2 * waitLimit))
	pc := newProbeClientOn(t, c, "http")
	id := pc.open("GET", "/bad", true, hpack.HeaderField{Name: "transfer-encoding", Value: "chunked"})
	waitFor(t, "the answer", waitLimit, func() bool { return pc.streamEnded(id) })
	if s := pc.status(id); s != "400" {
		t.Errorf("the client got %q, want 400", s)
	}
	c.Close()
	sv.waitDoneOnce(t)
	rec := onlyHTTPRecord(t, r)
	if want := `refused by the appliance's HTTP/2 server: request header "Transfer-Encoding" is not valid in HTTP/2`; rec.Action != "deny" ||
		rec.Status != 400 || rec.Error != want || rec.Path != "/bad" || rec.Scheme != "http" {
		t.Errorf("record %+v, want a deny of /bad, status 400, %q", rec, want)
	}
	if o.has("/bad") {
		t.Error("the refused request reached the origin")
	}
}

// TestH2ServerRefusalsNotServed: for the Rapid Reset guard, a request the
// appliance's HTTP/2 server answered 400 itself is answered by the
// appliance, not served upstream, as a deny is: one beside each stream
// reset before its answer kept the resets at exactly half of the streams
// served, and such a client was never refused. Now it gets
// GOAWAY(ENHANCE_YOUR_CALM) past 100 resets, as with denied pads.
func TestH2ServerRefusalsNotServed(t *testing.T) {
	r := newRig(t, testPolicy)
	pc, o := newProbeClient(t, r)
	resets := 0
	for ; resets < 150 && pc.goneA.Load() == nil; resets++ {
		path := fmt.Sprintf("/hang/r%d", resets)
		id := pc.open("GET", path, true)
		waitFor(t, path+" at the origin", 300*time.Millisecond, func() bool { return o.has(path) })
		pad := pc.open("GET", "/ok/pad", true, hpack.HeaderField{Name: "connection", Value: "close"})
		waitFor(t, "the pad's 400", waitLimit, func() bool { return pc.streamEnded(pad) })
		pc.reset(id)
	}
	g, _ := pc.goneA.Load().(string)
	if !strings.HasPrefix(g, "ENHANCE_YOUR_CALM") {
		t.Fatalf("after %d streams reset, each beside a 400 of the server's own: GOAWAY %q, want ENHANCE_YOUR_CALM", resets, g)
	}
	if resets > 110 {
		t.Errorf("refused after %d resets, want just past 100", resets)
	}
}
