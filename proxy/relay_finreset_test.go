package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// These tests check bytes_out of relayed flows the appliance resets after
// their client's FIN, the upload's tail unsent in the destination's
// socket: the reclaim and the stacks' close reset the destination at
// once, and counted all its send queue, which the reset throws away
// (24,592 bytes for the 4,096 the destination had; review r2s24 F2).

// TestReclaimAfterFINCountsOnlySent: flows whose client sent 24 KiB, and
// its FIN or not, to a destination that reads nothing (4 KiB rcvbuf): the
// memory reclaim resets the newest; bytes_out is what the destination had.
func TestReclaimAfterFINCountsOnlySent(t *testing.T) {
	t.Run("after FIN", func(t *testing.T) { reclaimCountsOnlySent(t, true) })
	t.Run("no FIN", func(t *testing.T) { reclaimCountsOnlySent(t, false) })
}

func reclaimCountsOnlySent(t *testing.T, fin bool) {
	const flows = 20
	r := newStallRig(t, 15*time.Minute)
	ln := smallBufferListener(t)
	conns := make(chan *net.TCPConn, flows)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c.(*net.TCPConn)
		}
	}()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	var dcs []*net.TCPConn
	var ports []uint16
	for range flows {
		c := r.dial(t, dst)
		dcs = append(dcs, <-conns)
		ports = append(ports, c.LocalAddr().(*net.TCPAddr).AddrPort().Port())
		if _, err := c.Write(make([]byte, 24<<10)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if fin {
			_ = c.(*gonet.TCPConn).CloseWrite()
		}
	}
	time.Sleep(300 * time.Millisecond)
	had := map[uint16]int64{}
	for i, dc := range dcs {
		had[ports[i]] = destinationHas(t, dc, 0) - int64(len(hello))
	}
	before := len(r.sink.parse(t))
	r.ns.SetMemoryPressure(netstack.MemoryCritical)
	r.p.SetMemoryPressure(netstack.MemoryCritical)
	waitUntil(t, 5*time.Second, func() bool { return r.ns.Stats().MemoryReclaimed >= flows-netstack.CriticalMemoryClientFlows }, "a reclaim")
	r.ns.SetMemoryPressure(netstack.MemoryAmple)
	r.p.SetMemoryPressure(netstack.MemoryAmple)
	n := int(r.ns.Stats().MemoryReclaimed)
	waitUntil(t, 5*time.Second, func() bool { return len(r.sink.parse(t))-before >= n }, "records")
	bad := 0
	for _, rec := range r.sink.parse(t)[before:] {
		got, ok := had[rec.ClientPort]
		t.Logf("record %s %q bytes_out %d; destination had %d (%v) client port %d", rec.Result, rec.Error, rec.BytesOut, got, ok, rec.ClientPort)
		if ok && rec.BytesOut-int64(len(hello)) != got {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d reclaimed flows count other than what the destination had", bad, n)
	}
}

// TestShutdownAfterFINCountsOnlySent: a flow whose client sent 24 KiB,
// and its FIN or not, to a destination that reads nothing; the stacks
// close (the drain's end) and reset the destination: bytes_out is what
// the destination had.
func TestShutdownAfterFINCountsOnlySent(t *testing.T) {
	for _, fin := range []bool{true, false} {
		r, srv := shutdownRig(t)
		ln := smallBufferListener(t)
		conns := make(chan *net.TCPConn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				conns <- c.(*net.TCPConn)
			}
		}()
		dst := ln.Addr().(*net.TCPAddr).AddrPort()
		c := r.dial(t, dst)
		dc := <-conns
		if _, err := c.Write(make([]byte, 24<<10)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if fin {
			_ = c.(*gonet.TCPConn).CloseWrite()
		}
		time.Sleep(300 * time.Millisecond)
		had := destinationHas(t, dc, 0)
		r.p.StacksClosing()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = r.p.Wait(ctx)
		cancel()
		rec, ok := r.record(t, time.Second)
		t.Logf("fin %v: record (%v) %s %q bytes_out %d; destination had %d", fin, ok, rec.Result, rec.Error, rec.BytesOut, had)
		if !ok || rec.BytesOut != had {
			t.Errorf("fin %v: bytes_out %d, but the destination had %d", fin, rec.BytesOut, had)
		}
	}
}
