package appliance

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// sendPaced sends the n inner packets packet(0..n-1) in batches of 32,
// kept at most a few batches ahead of the appliance (its packets_in since
// st0), so that none is lost on the way in.
func sendPaced(t *testing.T, r *rig, st0 stats, n int, packet func(i int) []byte) {
	t.Helper()
	batch := make([][]byte, 0, 32)
	for i := range n {
		batch = append(batch, packet(i))
		if len(batch) < cap(batch) && i < n-1 {
			continue
		}
		must(r.ep.SendBatch(batch))(t)
		batch = batch[:0]
		for k := 0; k < 2000 && r.stats().Netstack.PacketsIn-st0.Netstack.PacketsIn+128 < uint64(i+1); k++ {
			time.Sleep(time.Millisecond)
		}
	}
}

// udpPayloadAt counts the UDP payload bytes that reach host addr for
// destination ports in [lo, hi), read by a raw socket, as a capture on the
// host would see them with no socket on those ports; the test is skipped
// where no raw socket can be had. The socket is closed when t ends.
func udpPayloadAt(t *testing.T, addr netip.Addr, lo, hi int) *atomic.Int64 {
	t.Helper()
	raw, err := net.ListenIP("ip4:udp", &net.IPAddr{IP: addr.AsSlice()})
	if err != nil {
		t.Skipf("a raw socket to read what reaches %s: %v", addr, err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetReadBuffer(8 << 20)
	var delivered atomic.Int64
	go func() {
		buf := make([]byte, 70000)
		for {
			n, _, err := raw.ReadFrom(buf)
			if err != nil {
				return
			}
			if p := int(buf[2])<<8 | int(buf[3]); n >= 8 && p >= lo && p < hi {
				delivered.Add(int64(n - 8))
			}
		}
	}()
	return &delivered
}
