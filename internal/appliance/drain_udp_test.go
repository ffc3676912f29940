package appliance

import (
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDrainEndsStreamingUDPFlows: UDP flows whose destination keeps
// sending as the drain closes the packet stacks end, Run returns within
// the drain, and every flow is recorded. Closing a stack notifies a flow's
// client side while holding its endpoint's lock; the flow's relay, ending
// on that notification, closed its host socket there, and the close waited
// for the host goroutine, which was writing the destination's datagram to
// that same endpoint: Run never returned, and the records were lost.
func TestDrainEndsStreamingUDPFlows(t *testing.T) {
	const flows = 8
	r := newRig(t, nil, nil)
	pc := must(net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.net.server(3), 0))))(t)
	t.Cleanup(func() { pc.Close() })
	var stop atomic.Bool
	t.Cleanup(func() { stop.Store(true) })
	// The destination answers each client with a stream of datagrams.
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			go func() {
				d := make([]byte, 1200)
				for !stop.Load() {
					if _, err := pc.WriteToUDPAddrPort(d, from); err != nil {
						return
					}
					time.Sleep(50 * time.Microsecond)
				}
			}()
		}
	}()
	dst := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	for range flows {
		c := must(r.client.DialUDP(dst))(t)
		defer c.Close()
		must(c.Write([]byte("stream please")))(t)
	}
	waitFor(t, "the UDP flows relayed", func() string {
		if n := r.app.proxy.Stats().UDPActive; n < flows {
			return "fewer"
		}
		return ""
	})
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	r.cancel() // the drain: the destination keeps the flows busy, so the stacks are closed under them
	select {
	case err := <-r.done:
		r.done <- err // for the rig's Cleanup
		if took := time.Since(start); took > rigDrain+3*time.Second {
			t.Errorf("Run returned %v after the drain began; the drain is %v", took, rigDrain)
		}
	case <-time.After(rigDrain + 10*time.Second):
		stop.Store(true)
		buf := make([]byte, 4<<20)
		var keep []string
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "gwlbproxy/netstack.(*Server).Close") || strings.Contains(g, "readHost") {
				keep = append(keep, g)
			}
		}
		t.Fatalf("Run has not returned %v after the drain began; the goroutines closing the stacks and reading host sockets:\n%s",
			time.Since(start).Round(time.Second), strings.Join(keep, "\n\n"))
	}
	n := 0
	for _, rec := range r.readRecords() {
		if rec.Kind == "udp" && rec.DestPort == dst.Port() {
			n++
			if rec.BytesIn == 0 {
				t.Errorf("a streaming flow's record counts no bytes in: %+v", rec)
			}
		}
	}
	if n != flows {
		t.Errorf("%d records of the %d UDP flows the drain ended; want one each", n, flows)
	}
}
