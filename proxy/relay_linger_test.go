package proxy

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// talkingSlowDest listens on loopback; its one connection sends 512
// bytes every 5 ms from the start, and reads nothing for readAfter, then
// reads to its end and says how many bytes it got and how the stream
// ended.
func talkingSlowDest(t *testing.T, readAfter time.Duration) (netip.AddrPort, <-chan destEnd) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ends := make(chan destEnd, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		stop := make(chan struct{})
		defer close(stop)
		go func() { // it keeps talking
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for range 4000 {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := c.Write(make([]byte, 512)); err != nil {
					return
				}
			}
		}()
		time.Sleep(readAfter) // a slow reader: the scenario, not a wait for an event
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := io.Copy(io.Discard, c)
		ends <- destEnd{n, err}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), ends
}

// TestRelayWholeUploadReachesTalkingDestinationAfterClientBreak: a client
// uploads 1 MiB and its FIN, all acknowledged by the appliance, then
// resets, while the destination keeps sending and reads only later. The
// upload was whole: the destination gets every byte and the FIN, and the
// record, written once it has, counts them. closeDelivering dropped what
// the destination had sent and closed, but the destination went on
// sending, and the kernel answered that with a RST that threw the
// upload's tail away, while the record said bytes_out 1 MiB.
func TestRelayWholeUploadReachesTalkingDestinationAfterClientBreak(t *testing.T) {
	const size = 1 << 20
	p, sink, client := quickKeepaliveRig(t)
	r := &stallRig{p: p, sink: sink, client: client}
	dst, ends := talkingSlowDest(t, 1500*time.Millisecond)
	c := dialRaw(t, client, dst)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() { // the client reads what the destination sends, until it resets
		b := make([]byte, 64<<10)
		for {
			if _, err := c.Read(b); err != nil {
				return
			}
		}
	}()
	uploadWholeThenReset(t, c, size)
	var got destEnd
	select {
	case got = <-ends:
	case <-time.After(25 * time.Second):
		t.Fatal("the destination's read did not end")
	}
	rec, ok := r.record(t, 10*time.Second)
	if !ok {
		t.Fatal("no record")
	}
	t.Logf("destination got %d of %d bytes, ended by %v; record: result %s, bytes_out %d, error %q",
		got.n, size, got.err, rec.Result, rec.BytesOut, rec.Error)
	wantWholeUploadDelivered(t, got, size, rec.BytesOut)
}

// TestRelayUndeliveredTailRecordedCut: a client uploads and sends its
// FIN, then resets, and the destination never reads: the relay lingers
// for the write-stall timeout in force, then resets the destination, and
// the record says the upload's tail was not delivered, its bytes_out
// short of the upload by what the destination never acknowledged.
func TestRelayUndeliveredTailRecordedCut(t *testing.T) {
	const size = 256 << 10
	r := lingerOnDeafDest(t, 2*time.Second, size)
	rec, ok := r.record(t, 10*time.Second)
	if !ok {
		t.Fatal("no record: the relay lingered past its bound")
	}
	t.Logf("record: result %s, bytes_out %d, error %q", rec.Result, rec.BytesOut, rec.Error)
	if rec.Result == "ok" || !strings.Contains(rec.Error, "tail was not delivered") {
		t.Errorf("record result %s (%q), want one that says the tail was not delivered", rec.Result, rec.Error)
	}
	if rec.BytesOut >= size {
		t.Errorf("record bytes_out %d of a %d-byte upload the destination never read", rec.BytesOut, size)
	}
}

// uploadWholeThenReset sends size bytes (hello first) and the FIN through
// c, waits until the appliance has acknowledged all of it, and resets c:
// a client whose upload was whole when it broke.
func uploadWholeThenReset(t *testing.T, c *rawClient, size int) {
	t.Helper()
	payload := make([]byte, size)
	copy(payload, hello)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); tcp.EndpointState(c.ep.State()) != tcp.StateFinWait2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the appliance did not take the whole upload and its FIN (client state %v)", tcp.EndpointState(c.ep.State()))
		}
	}
	c.reset()
}

// wantWholeUploadDelivered holds a flow whose client's upload of size
// bytes was whole to the destination's end got: every byte and the FIN,
// and the record's bytesOut what the destination got.
func wantWholeUploadDelivered(t *testing.T, got destEnd, size int64, bytesOut int64) {
	t.Helper()
	if got.n != size || got.err != nil {
		t.Errorf("the destination got %d of the %d bytes of a whole upload, ended by %v; want all and the FIN", got.n, size, got.err)
	}
	if bytesOut != got.n {
		t.Errorf("record bytes_out %d, but the destination got %d", bytesOut, got.n)
	}
}

// lingerOnDeafDest has a client of a proxy whose write-stall timeout is
// stall send size bytes and its FIN, all acknowledged, to a destination
// that reads nothing while the test runs, and reset: a flow that lingers.
func lingerOnDeafDest(t *testing.T, stall time.Duration, size int) *stallRig {
	t.Helper()
	p, sink, client := quickKeepaliveRig(t)
	p.SetWriteStallTimeout(stall)
	r := &stallRig{p: p, sink: sink, client: client}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	dst, _ := slowReadDest(t, release)
	c := dialRaw(t, client, dst)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	uploadWholeThenReset(t, c, size)
	return r
}
