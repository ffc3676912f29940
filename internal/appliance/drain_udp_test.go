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
// the drain, and every flow is recorded, as ended by the shutdown (`reset`
// and its words, as TCP flows are: they were recorded `ok` with no error,
// like flows that idled out), and so is a DNS query still waiting for its
// answer (it was recorded `timeout`). Closing a stack notifies a flow's
// client side while holding its endpoint's lock; the flow's relay, ending
// on that notification, closed its host socket there, and the close waited
// for the host goroutine, which was writing the destination's datagram to
// that same endpoint: Run never returned, and the records were lost.
func TestDrainEndsStreamingUDPFlows(t *testing.T) {
	const flows = 8
	// A free port for the resolver, which listens on the rig's server
	// address, known once the rig is made: another address's port is
	// free there too, bar a race no other test runs.
	probe := must(net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}))(t)
	dnsPort := uint16(probe.LocalAddr().(*net.UDPAddr).Port)
	probe.Close()
	r := newRig(t, func(o *Options) { o.DNSPorts = []uint16{dnsPort} }, nil)
	var asked atomic.Int32
	resolver := serveUDP(t, netip.AddrPortFrom(r.net.server(4), dnsPort), func([]byte) []byte { asked.Add(1); return nil }) // it never answers
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
	dc := must(r.client.DialUDP(resolver))(t)
	defer dc.Close()
	// A query for waiting.example, type A.
	must(dc.Write([]byte("\x00\x4d\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07waiting\x07example\x00\x00\x01\x00\x01")))(t)
	waitFor(t, "the UDP flows relayed and the query asked", func() string {
		if n := r.app.proxy.Stats().UDPActive; n < flows+1 || asked.Load() == 0 {
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
	const shutdown = "ended by the appliance's shutdown (its packet stacks closed)"
	n, dnsFlow, queries := 0, false, 0
	for _, rec := range r.readRecords() {
		switch {
		case rec.Kind == "udp" && rec.DestPort == dst.Port():
			n++
			if rec.BytesIn == 0 {
				t.Errorf("a streaming flow's record counts no bytes in: %+v", rec)
			}
			if rec.Result != "reset" || rec.Error != shutdown {
				t.Errorf("a streaming flow's record %+v; want reset, error %q", rec, shutdown)
			}
		case rec.Kind == "udp" && rec.DestPort == dnsPort:
			dnsFlow = true
			if rec.Result != "reset" || !strings.HasPrefix(rec.Error, shutdown) {
				t.Errorf("the DNS flow's record %+v; want reset, error %q…", rec, shutdown)
			}
		case rec.Kind == "dns":
			queries++
			if rec.QueryName != "waiting.example" || rec.Result != "reset" || rec.Error != shutdown+" before its answer" {
				t.Errorf("dns record %+v; want waiting.example, reset, error %q", rec, shutdown+" before its answer")
			}
		}
	}
	if n != flows || !dnsFlow || queries != 1 {
		t.Errorf("%d records of the %d UDP flows the drain ended, the DNS flow's %v, %d dns records; want one each", n, flows, dnsFlow, queries)
	}
}
