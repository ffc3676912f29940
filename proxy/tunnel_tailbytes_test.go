package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// A bumped WebSocket tunnel whose client resets after its FIN while the
// destination (zero window, never reading) still lacks the tail: the
// linger's bound passes and the upstream socket is reset with most of the
// upload never sent. The tls record's bytes_out leaves out what was never
// sent: the tunnel reset the socket beneath the counting layer, whose
// Close then found it closed, and 256 KiB never sent were counted
// (review r1s24 F1).
func TestBumpedWebSocketTailCutCountsOnlySent(t *testing.T) {
	const size = 256 << 10
	defer intercept.SetTunnelLingerBound(3 * time.Second)()
	release := make(chan struct{})
	defer close(release)
	ends := make(chan destEnd, 4)
	dests := make(chan *readCounted, 1)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSlowReader(release, ends), destRcvBuf: 4096,
		destWrap: func(l net.Listener) net.Listener { return &readCountingListener{Listener: l, conn: dests} }})
	rc := wsUploadWhole(t, r, size)
	time.Sleep(1200 * time.Millisecond)
	rc.reset()
	tlsRec, tunRec := connRecords(t, r, rc, 12*time.Second, "the records of the tunnel")
	dc := <-dests
	got := destinationHas(t, dc.TCPConn, dc.n.Load())
	t.Logf("tls %s %q bytes_out %d; tunnel %s bytes_out %d; destination has %d (upload %d)",
		tlsRec.Result, tlsRec.Error, tlsRec.BytesOut, tunRec.Result, tunRec.BytesOut, got, size)
	// Under a shut window nothing is in flight: what was sent, the
	// destination has.
	if tlsRec.BytesOut != got {
		t.Errorf("tls record bytes_out %d, but the destination has %d bytes: the tail cut's reset threw the rest away", tlsRec.BytesOut, got)
	}
}
