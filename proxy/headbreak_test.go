package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A cleartext HTTP client that breaks its connection with its head begun
// (an HTTP/1 request under way, records.md) lost that request: the
// record says reset, or timeout for a client that vanished (its
// keepalives unanswered), with "the client's connection broke: ...", and
// keeps the connection's decision. The client sent nothing malformed and
// the appliance refused nothing: before, the record was a deny with "no
// request could be read: malformed or incomplete request head", counted
// as a denial.
func TestInterceptedClientBreakMidHeadNotDenied(t *testing.T) {
	for _, tc := range []struct {
		name   string
		vanish bool
		want   string
	}{{"reset", false, "reset"}, {"vanish", true, "timeout"}} {
		t.Run(tc.name, func(t *testing.T) {
			p, sink, client := quickKeepaliveRig(t)
			dest := destination0(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
			c := dialRaw(t, client, dest)
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: origin.example\r\nX-P: ppp"); err != nil {
				t.Fatal(err)
			}
			// No event says the appliance has read the head's first
			// bytes; 100 ms is ample on loopback (as in
			// TestInterceptedClientTimeoutMidHead).
			time.Sleep(100 * time.Millisecond)
			if tc.vanish {
				client.SetTap(func([]byte) bool { return true }) // the client is gone
			} else {
				c.reset()
			}
			rec, ok := httpRecord(t, sink, 8*time.Second)
			if !ok {
				t.Fatal("no http record 8 s after the client's break")
			}
			if rec.Action == "deny" || rec.Result != tc.want || !strings.Contains(rec.Error, "the client's connection broke") {
				t.Errorf("record: action %s, result %s, error %q; want the connection's action, %s, the client's connection broke",
					rec.Action, rec.Result, rec.Error, tc.want)
			}
			if rec.Rule == "" {
				t.Errorf("record has no rule; want the connection's (error %q)", rec.Error)
			}
			if d := p.Stats().Denied; d != 0 {
				t.Errorf("denied %d, want 0: the appliance refused nothing", d)
			}
		})
	}
}
