package proxy

import (
	"io"
	"net/http"
	"slices"
	"testing"
	"time"
)

// TestPlaintextOfCleanCloseWhileStacksClosing: the stacks about to close
// (the drain's end begun, ShuttingDown true), a tapped bumped client
// closes cleanly (close_notify, FIN): nothing was reset on the wire, and
// the plaintext ends with FINs, not the destination's side's RST, which
// the stacks' closing alone made it show (review r3s24 F2).
func TestPlaintextOfCleanCloseWhileStacksClosing(t *testing.T) {
	for _, closing := range []bool{false, true} {
		sink := &endSink{}
		r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour, plaintext: sink,
			handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hi") }})
		tc := r.answeredOnce(t)
		waitUntil(t, 5*time.Second, func() bool { return countKind(r.sink.parse(t), "http") == 1 }, "the request's record")
		if closing {
			r.p.StacksClosing() // the drain's end begins; the stacks still up
		}
		_ = tc.CloseWrite() // close_notify + FIN
		// read the appliance's end: close_notify, FIN
		buf := make([]byte, 100)
		_, rerr := tc.Read(buf)
		ev := sink.ends(t)
		rec, _ := r.tlsRecord(t, 5*time.Second)
		t.Logf("closing=%v: client read %v; plaintext ends %v; tls record %s %q", closing, rerr, ev, rec.Result, rec.Error)
		if slices.Contains(ev, "ServerReset") {
			t.Errorf("closing=%v: a clean close on the wire (client read %v) shown as the appliance's RST: %v", closing, rerr, ev)
		}
		tc.Close()
	}
}
