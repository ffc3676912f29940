package proxy

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPlaintextOfDownloadAtShutdown: a tapped bumped session mid-download
// (the client reading slowly, the appliance's writes to it waiting), no
// read of the client failing; the stacks close, resetting the client: the
// plaintext ends with the appliance's RST, not FINs (7 of 30 streams
// ended cleanly when only a failed read counted; review r4s24 F3).
func TestPlaintextOfDownloadAtShutdown(t *testing.T) {
	bad := 0
	const runs = 10
	for range runs {
		sink := &endSink{}
		r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour, plaintext: sink,
			handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
				b := make([]byte, 64<<10)
				for range 256 {
					if _, err := w.Write(b); err != nil {
						return
					}
				}
			}})
		tc := r.bumpedGet(t, "/x")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		time.Sleep(500 * time.Millisecond) // the appliance's writes to the client wait
		r.p.StacksClosing()
		r.ns.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = r.p.Wait(ctx)
		cancel()
		rec, ok := r.tlsRecord(t, 5*time.Second)
		ev := sink.ends(t)
		t.Logf("tls record (%v): %s %q; plaintext ends %v", ok, rec.Result, rec.Error, ev)
		if !slices.Contains(ev, "ServerReset") || !strings.Contains(rec.Error, "shutdown") {
			bad++
		}
		tc.Close()
	}
	if bad > 0 {
		t.Errorf("%d of %d: the stacks' reset of a downloading client not shown as the appliance's RST", bad, runs)
	}
}
