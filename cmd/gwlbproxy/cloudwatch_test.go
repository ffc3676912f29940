package main

import (
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy"
)

// TestRecordsReachCloudWatch: traffic through the appliance ends up as
// events in a local CloudWatch Logs endpoint, through the real SDK client
// and the default credential chain, carrying the record schema's fields;
// the stream is flushed on shutdown.
func TestRecordsReachCloudWatch(t *testing.T) {
	cw := cwlogstest.NewServer(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	r := newRig(t, func(o *options) {
		o.CloudWatch.Group = "/gwlbproxy/test"
		o.CloudWatch.Stream = "i-test"
		o.CloudWatch.Endpoint = cw.URL
		o.CloudWatch.FlushInterval = time.Hour // only the shutdown flush ships
	}, nil)
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) { io.WriteString(c, "hi") })
	const conns = 5
	for range conns {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
		io.ReadAll(c)
		c.Close()
	}
	r.records(func(rs []proxy.Record) bool { return len(rs) >= conns })
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
