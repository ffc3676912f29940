package netstack_test

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// tcpSegmentOpts is tcpSegment with the TCP options opts (a multiple of 4
// bytes long).
func tcpSegmentOpts(src, dst netip.AddrPort, seq, ack uint32, flags byte, opts, payload []byte) []byte {
	tcp := make([]byte, 20+len(opts)+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = byte((20+len(opts))/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], opts)
	copy(tcp[20+len(opts):], payload)
	binary.BigEndian.PutUint16(tcp[16:], tcpSum(src.Addr(), dst.Addr(), tcp))
	return tcp
}

// synAckOf opens a connection from cli with a SYN carrying synOpts and
// payload and returns the stack's SYN-ACK (its IPv4 packet).
func (r *tapRig) synAckOf(t *testing.T, cli netip.AddrPort, isn uint32, synOpts, payload []byte) []byte {
	t.Helper()
	var mu sync.Mutex
	var synack []byte
	r.client.SetTap(func(inner []byte) bool {
		if inner[9] == 6 && inner[33] == 0x12 {
			mu.Lock()
			synack = append([]byte(nil), inner...)
			mu.Unlock()
		}
		return true
	})
	syn := tcpSegmentOpts(cli, connDest, isn, 0, 0x02, synOpts, payload)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 1, syn, 0, len(syn), false))
	for deadline := time.Now().Add(waitFor); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		sa := synack
		mu.Unlock()
		if sa != nil {
			return sa
		}
	}
	t.Fatal("no SYN-ACK")
	return nil
}
