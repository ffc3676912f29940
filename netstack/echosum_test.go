package netstack

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// TestEchoBadIPv4ChecksumDropped: with no capture tap on, an echo request
// whose IPv4 header checksum does not hold is dropped and counted, as it
// is with a tap (sumsFail), and is not relayed; the same request with its
// checksum mended is answered.
func TestEchoBadIPv4ChecksumDropped(t *testing.T) {
	c := gwlbSocket(t, "127.0.0.1:0")
	s := startServer(t, Config{ReplyPort: c.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	bad := echoPacket(1, "ping")
	bad[10] ^= 0x5a
	if _, err := c.WriteToUDPAddrPort(geneve(7, bad), s.Addr()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "an inner_bad_checksum drop", func() (bool, string) {
		st := s.Stats()
		return st.Drops["inner_bad_checksum"] == 1, fmt.Sprintf("drops %v", st.Drops)
	})
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 65536)); err == nil {
		t.Fatalf("a reply of %d bytes to an echo request with a bad IPv4 checksum", n)
	}
	if st := s.Stats(); st.EchoRequests != 0 || st.Flows != 0 {
		t.Fatalf("%d echo requests relayed, %d flows", st.EchoRequests, st.Flows)
	}
	if _, err := c.WriteToUDPAddrPort(geneve(7, echoPacket(1, "ping")), s.Addr()); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 65536)); err != nil {
		t.Fatalf("no reply to the good echo request: %v; stats %+v", err, s.Stats())
	}
}
