package proxy

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReloadDenyEndsBreakWhileWriting: a client uploads more than a
// destination that neither reads nor talks takes, its FIN is
// acknowledged, and it resets while the relay's write waits: the flow
// lingers from the break (relaybreak.go). A reload that denies it must
// end it as it ends a linger at the copy's end (the control): at once,
// `denied`, the upload's tail not delivered. Nothing asked the recheck
// while the write waited: the flow ran to the write-stall timeout (20 s
// here), recorded `stalled`, never `denied`.
func TestReloadDenyEndsBreakWhileWriting(t *testing.T) {
	for _, blocked := range []bool{false, true} {
		name := "linger at the copy's end"
		if blocked {
			name = "break seen while writing"
		}
		t.Run(name, func(t *testing.T) {
			p, sink, client := quickKeepaliveRig(t)
			p.SetWriteStallTimeout(20 * time.Second)
			r := &stallRig{p: p, sink: sink, client: client}
			release := make(chan struct{})
			var once sync.Once
			defer once.Do(func() { close(release) })
			dst, ends := slowReadDest(t, release)
			before := hostSocketQueues(t, dst.Port())
			c := dialRaw(t, client, dst)
			c.SetDeadline(time.Now().Add(60 * time.Second))
			if blocked {
				uploadUntilRelayBlocked(t, p, c, dst.Port(), before)
				if err := c.halfClose(); err != nil {
					t.Fatal(err)
				}
				waitFINAcked(t, c)
				waitRelayWriteWaiting(t, p)
				c.reset()
			} else {
				uploadWholeThenReset(t, c, 256<<10)
			}
			time.Sleep(500 * time.Millisecond) // the break taken: nothing outside the relay tells when
			if n := len(sink.parse(t)); n != 0 {
				t.Fatalf("%d records before the reload", n)
			}
			denyAll(t, p)
			at := time.Now()
			rec, ok := r.record(t, 5*time.Second)
			if !ok {
				t.Fatalf("no record 5 s after the reload's deny (write-stall timeout %v)", p.WriteStallTimeout())
			}
			t.Logf("after %v: %s %q bytes_out %d", time.Since(at).Round(time.Millisecond), rec.Result, rec.Error, rec.BytesOut)
			if rec.Result != "denied" || !strings.Contains(rec.Error, "ended by a policy reload") ||
				!strings.Contains(rec.Error, "the upload's tail was not delivered") {
				t.Errorf("record %s %q, want denied, ended by a policy reload, the tail not delivered", rec.Result, rec.Error)
			}
			once.Do(func() { close(release) })
			select {
			case got := <-ends:
				if rec.BytesOut < got.n {
					t.Errorf("bytes_out %d, less than the %d bytes the destination read", rec.BytesOut, got.n)
				}
			case <-time.After(10 * time.Second):
				t.Error("the destination's read did not end")
			}
		})
	}
}
