package proxy

import (
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// smallBufferListener listens on loopback with a 4 KiB receive buffer
// for its connections: a destination slower than its client.
func smallBufferListener(t *testing.T) net.Listener {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Set before listen, so that accepted connections inherit it.
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// uploadWholeThenWaitAndReset is uploadWholeThenReset for a client that
// waits for an answer a while before it resets: the destination, which
// reads nothing, has had its window closed since, the kernel probing it.
func uploadWholeThenWaitAndReset(t *testing.T, c *rawClient, size int, wait time.Duration) {
	t.Helper()
	payload := make([]byte, size)
	copy(payload, hello)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(wait) // the client waiting for an answer: the scenario
	c.reset()
}

// TestRelayZeroWindowDestinationTailNotDelivered: a destination alive but
// reading nothing (a zero window, answering the kernel's probes, never
// resetting) while the relay lingers after its client's FIN and, a while
// later, reset. The kernel's user timeout, whose clock started with the
// first probe, before the linger, ends it first, and the relay's other
// direction reads its error. The record says the tail was not delivered,
// bytes_out what the destination got. It said bytes_out the whole upload
// and nothing of a cut (the relay's end closed the socket under the
// linger), or that the destination reset (a guess from TCP_INFO).
func TestRelayZeroWindowDestinationTailNotDelivered(t *testing.T) {
	const size = 256 << 10
	for i := range 2 {
		p, sink, client := quickKeepaliveRig(t)
		p.SetWriteStallTimeout(3 * time.Second)
		r := &stallRig{p: p, sink: sink, client: client}
		release := make(chan struct{})
		dst, ends := slowReadDest(t, release)
		c := dialRaw(t, client, dst)
		c.SetDeadline(time.Now().Add(60 * time.Second))
		uploadWholeThenWaitAndReset(t, c, size, 1200*time.Millisecond)
		rec, ok := r.record(t, 10*time.Second)
		close(release)
		var got destEnd
		select {
		case got = <-ends:
		case <-time.After(12 * time.Second):
			t.Fatal("the destination's read did not end")
		}
		if !ok {
			t.Fatalf("run %d: no record", i)
		}
		if strings.Contains(rec.Error, "connection ended with") || !strings.Contains(rec.Error, "tail was not delivered") || rec.BytesOut > got.n+4096 {
			t.Errorf("run %d: the destination got %d of %d bytes, never resetting; the record says bytes_out %d, %s %q; want the tail not delivered",
				i, got.n, size, rec.BytesOut, rec.Result, rec.Error)
		}
		if rec.BytesOut < got.n {
			t.Errorf("run %d: bytes_out %d, less than the %d bytes the destination read", i, rec.BytesOut, got.n)
		}
	}
}

// TestRelayDestinationResetMidUploadRecorded: a destination that reads a
// quarter of the upload and resets while the relay lingers. The record
// counts no more than it read (and what was in flight), and never calls
// the end the appliance's timeout. The relay's end closed the socket
// under the linger: bytes_out the whole upload.
func TestRelayDestinationResetMidUploadRecorded(t *testing.T) {
	const size = 256 << 10
	for i := range 2 {
		p, sink, client := quickKeepaliveRig(t)
		p.SetWriteStallTimeout(10 * time.Second)
		r := &stallRig{p: p, sink: sink, client: client}
		ln := smallBufferListener(t)
		got := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			time.Sleep(800 * time.Millisecond) // a slow reader
			n, _ := io.CopyN(io.Discard, c, 64<<10)
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			got <- n
		}()
		c := dialRaw(t, client, ln.Addr().(*net.TCPAddr).AddrPort())
		c.SetDeadline(time.Now().Add(30 * time.Second))
		uploadWholeThenReset(t, c, size)
		rec, ok := r.record(t, 10*time.Second)
		n := <-got
		if !ok {
			t.Fatalf("run %d: no record", i)
		}
		if rec.BytesOut > n+8192 || strings.Contains(rec.Error, "timed out") {
			t.Errorf("run %d: the destination read %d of %d bytes and reset; the record says bytes_out %d, %s %q", i, n, size, rec.BytesOut, rec.Result, rec.Error)
		}
	}
}

// TestRelayReloadDenyEndsLinger: a reload that denies a relayed flow
// while its destination lingers (the client sent its whole upload and
// FIN, then reset; the destination reads nothing, and talks once the
// reload is in, so the relay's other direction finds the deny): the linger
// ends, the destination is reset with the record, and the tail goes no
// further to a destination the policy now denies; the record says both.
// The socket was closed under the linger and left to the kernel, which
// delivered the whole upload after the record; then the denied record
// dropped the cut.
func TestRelayReloadDenyEndsLinger(t *testing.T) {
	const size = 256 << 10
	p, sink, client := quickKeepaliveRig(t)
	p.SetWriteStallTimeout(20 * time.Second)
	r := &stallRig{p: p, sink: sink, client: client}
	d := startReloadTalkingDest(t, nil)
	c := dialRaw(t, client, d.addr)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	uploadWholeThenReset(t, c, size)
	time.Sleep(500 * time.Millisecond) // the reset taken, the linger begun: no event says so
	denyAll(t, p)
	close(d.talk)
	rec, ok := r.record(t, 5*time.Second)
	left := socketsTo(t, d.addr.Port())
	close(d.startRead)
	var n int64 = -1
	select {
	case n = <-d.read:
	case <-time.After(12 * time.Second):
	}
	if !ok {
		t.Fatal("no record within 5 s of the reload's deny: the linger went on")
	}
	if left > 0 || n == size || rec.Result != "denied" || rec.BytesOut >= size || !strings.Contains(rec.Error, "tail was not delivered") {
		t.Errorf("record %s bytes_out %d %q, sockets to the destination after it %d, the destination then read %d of %d; want denied, no socket left, the tail not delivered, and the record saying so",
			rec.Result, rec.BytesOut, rec.Error, left, n, size)
	}
	if rec.BytesOut < n {
		t.Errorf("bytes_out %d, less than the %d bytes the destination read", rec.BytesOut, n)
	}
}

// TestBumpedWebSocketZeroWindowDestinationTailNotDelivered: a WebSocket
// tunnel's linger towards a destination alive with a zero window (never
// reading, never resetting), the client resetting a while after its FIN:
// both records say the tail was not delivered. They said the destination
// reset (goproxy's copy took the kernel's timeout, and a guess from
// TCP_INFO named the destination).
func TestBumpedWebSocketZeroWindowDestinationTailNotDelivered(t *testing.T) {
	const size = 256 << 10
	defer intercept.SetTunnelLingerBound(3 * time.Second)()
	release := make(chan struct{})
	defer close(release)
	ends := make(chan destEnd, 4)
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour,
		handler: wsSlowReader(release, ends), destRcvBuf: 4096})
	rc := wsUploadWhole(t, r, size)
	time.Sleep(1200 * time.Millisecond) // the client waiting for an answer: the scenario
	rc.reset()
	tlsRec, tunRec := connRecords(t, r, rc, 12*time.Second, "the records of the tunnel")
	for _, rec := range []struct{ name, result, errTxt string }{
		{"tls", tlsRec.Result, tlsRec.Error}, {"tunnel", tunRec.Result, tunRec.Error}} {
		if !strings.Contains(rec.errTxt, "tail was not delivered") || strings.Contains(rec.errTxt, "connection ended with") {
			t.Errorf("the destination never read nor reset; the %s record says %s %q", rec.name, rec.result, rec.errTxt)
		}
	}
}

// reloadTalkingDest is a destination with a 4 KiB receive buffer that
// reads nothing until startRead is closed, then reads to the end and says
// how many bytes it got (read); it writes a line once early is closed
// (never when nil), and one every 100 ms once talk is closed, until it
// reads.
type reloadTalkingDest struct {
	addr            netip.AddrPort
	talk, startRead chan struct{}
	read            chan int64
}

func startReloadTalkingDest(t *testing.T, early <-chan struct{}) *reloadTalkingDest {
	t.Helper()
	ln := smallBufferListener(t)
	d := &reloadTalkingDest{addr: ln.Addr().(*net.TCPAddr).AddrPort(),
		talk: make(chan struct{}), startRead: make(chan struct{}), read: make(chan int64, 1)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if early != nil {
			<-early
			_, _ = c.Write([]byte("early\n"))
		}
		stop := make(chan struct{})
		go func() {
			<-d.talk
			for range 100 {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := c.Write([]byte("tick\n")); err != nil {
					return
				}
			}
		}()
		<-d.startRead
		close(stop)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		d.read <- n
	}()
	return d
}

// denyAll has p's policy reloaded to one that denies everything.
func denyAll(t *testing.T, p *Proxy) {
	t.Helper()
	pol, err := policy.Parse("reloaded.yaml", []byte("policy: {default: deny}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.Policy.Store(pol)
}

// TestReloadWakesLingers: a change of the policy in force wakes every
// linger, so that a reload's deny reaches one that has lingered a while
// (its look then once a second) at once, not up to a second later.
func TestReloadWakesLingers(t *testing.T) {
	p, _, _ := quickKeepaliveRig(t)
	woken := hostconn.LingersWoken()
	denyAll(t, p)
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("a reload woke no linger")
	}
}
