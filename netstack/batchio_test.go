package netstack

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// A burst of GENEVE datagrams, more than one recvmmsg takes, is read whole:
// every echo request in it is answered, with its own payload, and an
// oversized datagram among them is dropped and counted as such, not taken
// for a truncated GENEVE packet.
func TestReaderBatches(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	const burst = 3*maxBatch + 5
	for i := range burst {
		if i == burst/2 {
			if _, err := c.WriteToUDPAddrPort(make([]byte, readSlot+1000), s.Addr()); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.WriteToUDPAddrPort(geneve(7, echoPacket(uint16(i), fmt.Sprintf("req-%04d", i))), s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(map[string]bool)
	buf := make([]byte, 65536)
	for len(seen) < burst {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d echo replies, then: %v; stats %+v", len(seen), burst, err, s.Stats())
		}
		h, r := ParseHeader(buf[:n])
		if r != DropNone {
			t.Fatalf("reply: %s", r)
		}
		seen[string(buf[h.Len+28:n])] = true
	}
	for i := range burst {
		if !seen[fmt.Sprintf("req-%04d", i)] {
			t.Fatalf("no reply to request %d", i)
		}
	}
	st := s.Stats()
	if st.Drops[DropDatagramTooBig.String()] != 1 || st.PacketsIn != burst+1 {
		t.Fatalf("packets_in %d (want %d), drops %v (want one %s)", st.PacketsIn, burst+1, st.Drops, DropDatagramTooBig)
	}
}
