package proxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestRelayReloadDenyEndsLingerAfterDestinationDirectionEnded: TestRelayReloadDenyEndsLinger with
// a destination that talked once before the reload, after the client's
// break: the destination's direction ended on its failed write to the
// broken client. After the deny-all reload the destination talks again
// (bytes the linger reads and drops) while the tail still goes to it.
// policy.md: a relayed connection is decided again when it next carries
// bytes after a reload, either way; denied, both ends are reset. Nothing
// checked the reload: the whole upload (1 MiB) reached the denied
// destination after it, the record saying allow.
func TestRelayReloadDenyEndsLingerAfterDestinationDirectionEnded(t *testing.T) {
	for _, size := range []int{256 << 10, 1 << 20} {
		t.Run("", func(t *testing.T) { reloadAfterInEnded(t, size) })
	}
}

func reloadAfterInEnded(t *testing.T, size int) {
	p, sink, client := quickKeepaliveRig(t)
	p.SetWriteStallTimeout(8 * time.Second)
	r := &stallRig{p: p, sink: sink, client: client}
	ln := smallBufferListener(t)
	read := make(chan int64, 1)
	talkedOnce, talk, startRead := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		<-talkedOnce
		_, _ = c.Write([]byte("early\n"))
		stop := make(chan struct{})
		go func() {
			<-talk
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
		<-startRead
		close(stop)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		read <- n
	}()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	c := dialRaw(t, client, dst)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	uploadWholeThenReset(t, c, size)
	time.Sleep(300 * time.Millisecond)
	close(talkedOnce) // the destination's direction ends on the broken client
	time.Sleep(300 * time.Millisecond)
	pol, err := policy.Parse("reloaded.yaml", []byte("policy: {default: deny}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.Policy.Store(pol)
	close(talk)
	start := time.Now()
	rec, ok := r.record(t, 5*time.Second)
	left := socketsTo(t, dst.Port())
	close(startRead)
	var n int64 = -1
	select {
	case n = <-read:
	case <-time.After(12 * time.Second):
	}
	if !ok {
		rec, ok = r.record(t, 10*time.Second)
	}
	t.Logf("record after %v (ok %v): %s action %s bytes_out %d %q; sockets to the destination 5 s after the reload %d; the destination then read %d of %d",
		time.Since(start), ok, rec.Result, rec.Action, rec.BytesOut, rec.Error, left, n, size)
	if left > 0 || n == int64(size) || rec.Result != "denied" {
		t.Errorf("after a deny-all reload the destination talked and still got %d of %d bytes; record %s %q", n, size, rec.Result, rec.Error)
	}
}
