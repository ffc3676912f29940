package appliance

import (
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// cloudWatchRig is a rig whose records go to group /gwlbproxy/test, stream
// i-test of cw, with credentials from the environment as on an instance.
func cloudWatchRig(t *testing.T, cw *cwlogstest.Server, mutate func(*Options)) *rig {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	return newRig(t, func(o *Options) {
		o.CloudWatch.Group = "/gwlbproxy/test"
		o.CloudWatch.Stream = "i-test"
		o.CloudWatch.Endpoint = cw.URL
		mutate(o)
	}, nil)
}

// TestRecordsReachCloudWatch: traffic through the appliance ends up as
// events in a local CloudWatch Logs endpoint, through the real SDK client
// and the default credential chain, carrying the record schema's fields;
// the stream is flushed on shutdown.
func TestRecordsReachCloudWatch(t *testing.T) {
	cw := cwlogstest.NewServer(t)
	r := cloudWatchRig(t, cw, func(o *Options) {
		o.CloudWatch.FlushInterval = time.Hour // only the shutdown flush ships
	})
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) { io.WriteString(c, "hi") })
	const conns = 5
	for range conns {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
		io.ReadAll(c)
		c.Close()
	}
	r.records(func(rs []records.Record) bool { return len(rs) >= conns })
	if n := cw.EventCount("/gwlbproxy/test", "i-test"); n != 0 {
		t.Fatalf("%d events shipped before the flush interval or shutdown", n)
	}
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("appliance did not stop")
	}
	r.done <- nil
	events := cw.Events("/gwlbproxy/test", "i-test")
	if len(events) != conns {
		t.Fatalf("%d events in CloudWatch, want %d", len(events), conns)
	}
	for _, e := range events {
		var rec map[string]any
		if err := json.Unmarshal([]byte(e.Message), &rec); err != nil {
			t.Fatalf("event %q: %v", e.Message, err)
		}
		for _, field := range []string{"time", "kind", "action", "endpoint", "flow_cookie", "client_ip", "dest_ip", "dest_port", "bytes_in", "result"} {
			if _, ok := rec[field]; !ok {
				t.Errorf("event lacks %q: %s", field, e.Message)
			}
		}
		if rec["bytes_in"] != float64(2) || !strings.HasPrefix(rec["endpoint"].(string), "vpce-") {
			t.Errorf("event %s", e.Message)
		}
	}
}

// TestDrainShipsWithinDeadline: with a flow that never ends and CloudWatch
// answering every call with 503, the appliance still stops within its drain plus a
// moment, having shipped its records once the outage ended: the flush
// has its reserve inside the drain and retries fast while closing.
func TestDrainShipsWithinDeadline(t *testing.T) {
	cw := cwlogstest.NewServer(t)
	cw.CreateStream("/gwlbproxy/test", "i-test")
	r := cloudWatchRig(t, cw, func(o *Options) {
		o.CloudWatch.FlushInterval = 50 * time.Millisecond
		// A steady-state backoff far longer than the drain.
		o.CloudWatch.RetryMin, o.CloudWatch.RetryMax = time.Minute, time.Minute
	})
	cw.Outage(time.Hour, cwlogstest.Outage503)
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	done := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	io.WriteString(done, "x")
	io.ReadFull(done, make([]byte, 1))
	done.Close()
	open := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t) // never closed by the client
	defer open.Close()
	r.records(func(rs []records.Record) bool { return len(rs) >= 1 })
	deadline := time.Now().Add(10 * time.Second)
	calls := func() int { return cw.Calls("CreateLogGroup") + cw.Calls("CreateLogStream") + cw.Calls("PutLogEvents") }
	for calls() == 0 { // the shipper is now in its minute of backoff
		if time.Now().After(deadline) {
			t.Fatal("the shipper never tried to ship")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	r.cancel()
	time.Sleep(rigDrain - flushReserve(rigDrain)) // the flows' part of the drain
	cw.EndOutage()
	select {
	case <-r.done:
		if d := time.Since(start); d > rigDrain+2*time.Second {
			t.Errorf("stopped %v after the drain began; the drain is %v", d, rigDrain)
		}
	case <-time.After(rigDrain + 10*time.Second):
		t.Fatal("appliance did not stop within its drain")
	}
	r.done <- nil
	if n := cw.EventCount("/gwlbproxy/test", "i-test"); n != 2 {
		t.Errorf("%d events shipped, want both connections' records", n)
	}
}
