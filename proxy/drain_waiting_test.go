package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDrainEndsWaitingConnectionsRecorded: TCP connections the drain's
// close of the stacks ends while they still wait for their first bytes
// (silent, a ClientHello cut short, a request head cut short) or, when
// only a name could allow the destination, for a name, are recorded
// reset with the shutdown's words first, as every other flow the drain
// cuts. Before, their records said only "sniff: ... operation aborted",
// which reads as the client's doing.
func TestDrainEndsWaitingConnectionsRecorded(t *testing.T) {
	for _, tc := range waitingPolicies {
		t.Run(tc.name, func(t *testing.T) {
			r := newBumpStallRigPolicy(t, tc.policy, time.Hour, func(*bumpStallRig, http.ResponseWriter, *http.Request) {})
			r.dial0(t, r.dest) // silent
			hello := r.dial0(t, r.dest)
			if _, err := io.WriteString(hello, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"); err != nil { // a ClientHello cut short
				t.Fatal(err)
			}
			head := r.dial0(t, r.dest)
			if _, err := io.WriteString(head, "GET / HTTP/1.1\r\nHost: big.ex"); err != nil { // a head cut short
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for r.p.Stats().TCPActive != 3 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond) // the cut bytes reach the sniffers
			r.p.StacksClosing()
			r.ns.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := r.p.Wait(ctx); err != nil {
				t.Fatalf("the waiting connections did not end: %v", err)
			}
			for _, rec := range r.sink.records(t, 3) {
				if rec.Kind != "tcp" || rec.Result != "reset" || !strings.HasPrefix(rec.Error, errShutdown.Error()+": ") {
					t.Errorf("record kind %s result %s error %q; want tcp, reset, the shutdown's words first", rec.Kind, rec.Result, rec.Error)
				}
			}
		})
	}
}

// waitingPolicies are the two ways a TCP connection waits for its first
// bytes: dialled first, or with nothing dialled when only a name (the
// first bytes') could allow its destination.
var waitingPolicies = []struct{ name, policy string }{
	{"dialled first", "policy: {default: bump}\n"},
	{"only a name allows", "policy:\n  default: deny\n  rules:\n    - name: named\n      domains: [\"big.example\"]\n      action: bump\n"},
}
