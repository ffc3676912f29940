package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestSniffClientBreakRecords: a client that vanishes (its keepalives
// unanswered) before its first bytes, or in the middle of its
// ClientHello, is recorded timeout, "connection timed out", as a relayed
// flow's vanished client is (docs/records.md). It was recorded reset,
// with gonet's "operation timed out".
func TestSniffClientBreakRecords(t *testing.T) {
	partialHello := []byte{0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03}
	for _, tc := range []struct {
		name   string
		first  []byte
		result string
		text   string
	}{
		{"vanish before first bytes", nil, "timeout", "connection timed out"},
		{"vanish mid-ClientHello", partialHello, "timeout", "connection timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, sink, client := quickKeepaliveRig(t)
			r := &stallRig{p: p, sink: sink, client: client}
			dst := destination0(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
			c := dialRaw(t, client, dst)
			if tc.first != nil {
				if _, err := c.Write(tc.first); err != nil {
					t.Fatal(err)
				}
			}
			client.SetTap(func([]byte) bool { return true }) // the client is gone
			rec, ok := r.record(t, 10*time.Second)
			if !ok {
				t.Fatal("no record for the client that broke while sniffed")
			}
			if rec.Result != tc.result || !strings.HasSuffix(rec.Error, tc.text) {
				t.Errorf("record: %s, %q; want %s, ending %q", rec.Result, rec.Error, tc.result, tc.text)
			}
		})
	}
}
