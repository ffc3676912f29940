package proxy

import (
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestReclaimAfterClientFINNamesReclaim: relayed flows whose client sent
// its upload and its FIN, the destination open: the appliance's memory
// reclaim resets some of them. Their records name the reclaim, as
// records.md says, and do not blame the client: the relay's watch for a
// client's break after its FIN saw the reclaim's own reset as one, and
// recorded "the client's connection broke after its FIN: reset by the
// appliance: ...". The same flows without the FIN are the control.
func TestReclaimAfterClientFINNamesReclaim(t *testing.T) {
	t.Run("after FIN", func(t *testing.T) { reclaimRecordsNameReclaim(t, true) })
	t.Run("no FIN", func(t *testing.T) { reclaimRecordsNameReclaim(t, false) })
}

func reclaimRecordsNameReclaim(t *testing.T, fin bool) {
	r := newStallRig(t, 15*time.Minute)
	var dialled atomic.Int64
	dst := destination(t, func(c *net.TCPConn) { dialled.Add(1); _, _ = io.Copy(io.Discard, c) })
	opened := int64(0)
	open := func() {
		c := dialRaw(t, r.client, dst)
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		opened++
		waitUntil(t, 5*time.Second, func() bool { return dialled.Load() == opened }, "the appliance's dial")
		if !fin {
			return
		}
		if err := c.halfClose(); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 5*time.Second, func() bool { return tcp.EndpointState(c.ep.State()) == tcp.StateFinWait2 }, "the FIN acked")
	}
	for range 20 {
		open()
	}
	before := len(r.sink.parse(t))
	r.ns.SetMemoryPressure(netstack.MemoryCritical)
	r.p.SetMemoryPressure(netstack.MemoryCritical)
	waitUntil(t, 5*time.Second, func() bool { return r.ns.Stats().MemoryReclaimed > 0 }, "a reclaim")
	r.ns.SetMemoryPressure(netstack.MemoryAmple)
	r.p.SetMemoryPressure(netstack.MemoryAmple)
	n := int(r.ns.Stats().MemoryReclaimed)
	waitUntil(t, 5*time.Second, func() bool { return len(r.sink.parse(t))-before >= n }, "records")
	for _, rec := range r.sink.parse(t)[before:] {
		if !strings.Contains(rec.Error, netstack.ErrMemoryReclaimed.Error()) || strings.Contains(rec.Error, "the client's connection broke") {
			t.Errorf("record of a reclaimed flow: %s %q; want the reclaim named and the client not blamed", rec.Result, rec.Error)
		}
	}
}
