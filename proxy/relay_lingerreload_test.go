package proxy

import (
	"testing"
	"time"
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
	talkedOnce := make(chan struct{})
	d := startReloadTalkingDest(t, talkedOnce)
	c := dialRaw(t, client, d.addr)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	uploadWholeThenReset(t, c, size)
	time.Sleep(300 * time.Millisecond)
	close(talkedOnce) // the destination's direction ends on the broken client
	time.Sleep(300 * time.Millisecond)
	denyAll(t, p)
	close(d.talk)
	start := time.Now()
	rec, ok := r.record(t, 5*time.Second)
	left := socketsTo(t, d.addr.Port())
	close(d.startRead)
	var n int64 = -1
	select {
	case n = <-d.read:
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
