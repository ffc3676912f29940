package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// TestRelayDestinationEndedFirstThenReset: a destination that answers and
// half-closes at once, reading nothing (4 KiB rcvbuf), then closes a
// second later (a RST: data unread). The client uploads 64 KiB and its
// FIN. Once both directions have ended, the destination's socket, most of
// the upload unsent, is held until it is acknowledged: the destination's
// reset is seen, the record says it, and bytes_out counts what the
// destination had. Closed at once, the record said ok with 65,552 bytes
// counted for 4,096 (review r3s24 F1).
func TestRelayDestinationEndedFirstThenReset(t *testing.T) {
	r := newStallRig(t, 15*time.Minute)
	ln := smallBufferListener(t)
	had := make(chan uint64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := c.(*net.TCPConn)
		_, _ = tc.Write([]byte("bye\n"))
		_ = tc.CloseWrite()
		time.Sleep(time.Second)
		rc, _ := tc.SyscallConn()
		_ = rc.Control(func(fd uintptr) {
			info, _ := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			had <- info.Bytes_received
		})
		tc.Close() // unread data: a RST
	}()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	c := r.dial(t, dst)
	if _, err := c.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	_ = c.(*gonet.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	t.Logf("client read %q %v", b, err)
	rec, ok := r.record(t, 5*time.Second)
	h := <-had
	t.Logf("record (%v) %s %q bytes_out %d; destination had %d at its close (reset)", ok, rec.Result, rec.Error, rec.BytesOut, h)
	if !ok || rec.BytesOut > int64(h) {
		t.Errorf("bytes_out %d counts %d bytes the destination never had", rec.BytesOut, rec.BytesOut-int64(h))
	}
	if rec.Result != "reset" || !strings.Contains(rec.Error, "the destination reset its connection") {
		t.Errorf("record %s %q, want the destination's reset with the upload unacknowledged", rec.Result, rec.Error)
	}
}
