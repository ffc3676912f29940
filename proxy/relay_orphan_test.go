package proxy

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestClosedDestinationBoundedByStallTimeout: a client that sends an
// upload and its FIN, then resets, to a destination that never reads
// but stays (zero window, answering the kernel's probes). The relay keeps
// the destination's socket open for the upload's tail (relayfin.go),
// which it must not hold beyond every bound of the appliance: after the
// write-stall timeout (2 s here) it resets it, and the record, written
// then, says the tail was not delivered. The socket, once closed, lived
// on in the kernel with that tail, outside every bound of the appliance
// (no fd, no record pending, not seen by the reclaim or the stall watch),
// for minutes.
func TestClosedDestinationBoundedByStallTimeout(t *testing.T) {
	r := newStallRig(t, 2*time.Second)
	hold := make(chan struct{})
	defer close(hold)
	dst := destination(t, func(c *net.TCPConn) { <-hold })
	c := dialRaw(t, r.client, dst)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	// More than the destination's socket and the appliance's send buffer
	// take at first: the tail stays in the appliance's socket.
	if _, err := c.Write(make([]byte, 512<<10)); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, func() bool { return tcp.EndpointState(c.ep.State()) == tcp.StateFinWait2 }, "the FIN acked")
	c.reset()
	rec, ok := r.record(t, 10*time.Second)
	if !ok {
		t.Fatal("no record")
	}
	if !strings.Contains(rec.Error, "tail was not delivered") {
		t.Errorf("record %s (%q), want it to say the tail was not delivered", rec.Result, rec.Error)
	}
	waitUntil(t, 2*time.Second, func() bool { return socketsTo(t, dst.Port()) == 0 }, "the socket to the destination gone with the record")
}

// socketsTo counts this namespace's IPv4 TCP sockets whose remote port is
// port, TIME-WAIT aside (it holds no data).
func socketsTo(t *testing.T, port uint16) int {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := fmt.Sprintf(":%04X", port)
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st ...
		if len(fields) > 3 && strings.HasSuffix(fields[2], want) && fields[3] != "06" {
			n++
		}
	}
	return n
}
