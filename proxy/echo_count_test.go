package proxy

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestEchoRecordCountsAnsweredRequest: the packet path writes an echo
// request and is descheduled before it runs again; the reply comes back,
// reaches the client, and the proxy closes (the appliance's drain). The
// record counts the request. Before, HandleEcho counted a request only
// after its write returned, and such a record said one request fewer
// than were answered (TestEchoRelayCloseEndsFlows: "Packets:2 BytesOut:2
// BytesIn:3" under load).
func TestEchoRecordCountsAnsweredRequest(t *testing.T) {
	release := make(chan struct{})
	var held sync.Once
	testHookEchoSent = func() { held.Do(func() { <-release }) } // the first request's
	t.Cleanup(func() { testHookEchoSent = nil })
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	r := newEchoRig(t, "policy: {default: allow}\n", nil)
	dst := netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, dst, 4242, 1, "xyz")
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v, want 1", got)
	}
	r.p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := r.p.Wait(ctx); err != nil {
		t.Fatalf("Wait after Close: %v", err)
	}
	rec := r.record(t, dst)
	releaseOnce.Do(func() { close(release) })
	if rec.Packets != 1 || rec.BytesOut != 3 || rec.BytesIn != 3 {
		t.Errorf("record packets %d, bytes_out %d, bytes_in %d: want the one request answered, 1, 3, 3", rec.Packets, rec.BytesOut, rec.BytesIn)
	}
}
