package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A client that closes its WebSocket cleanly (its close frame and FIN)
// resets after the destination's echoed close frame: its kernel's answer
// to what reaches its closed socket. The destination's end is relayed as
// a half-close (the appliance's FIN to the client), and a reset after
// the client's FIN that comes while the appliance's is unacknowledged
// (the appliance in LAST-ACK or CLOSING, not CLOSE-WAIT) is a plain reset
// to the stack, not its "reset after the FIN": the tunnel's record said
// reset, "the client's connection broke: connection reset by peer", the
// connection's ok (1 tunnel in 40 under load, in
// TestBumpedWebSocketCleanCloseThenResetRecordsOK). Here the appliance's
// FIN is kept from the client, which ends its side and resets once it
// has the echo.
func TestBumpedWebSocketResetMeetingTheRelayedEndRecordsOK(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, wsEchoClose, "http/1.1")
	var once sync.Once
	finSent := make(chan struct{})
	var dropFIN bool
	var mu sync.Mutex
	r.client.SetTap(func(inner []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		if !dropFIN || len(inner) < 20 || inner[0]>>4 != 4 || inner[9] != 6 {
			return false
		}
		ihl := int(inner[0]&0x0f) * 4
		if len(inner) < ihl+14 || inner[ihl+13]&0x01 == 0 {
			return false
		}
		once.Do(func() { close(finSent) })
		return true // the appliance's FIN, kept from the client
	})
	rc := dialRaw(t, r.client, r.dest)
	c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
	if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: big.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("the upgrade: %v; want 101", err)
	}
	mu.Lock()
	dropFIN = true
	mu.Unlock()
	if _, err := c.Write([]byte{0x88, 0x80, 0, 0, 0, 0}); err != nil { // close, masked, no payload
		t.Fatal(err)
	}
	if _, err := io.ReadFull(br, make([]byte, 4)); err != nil {
		t.Fatalf("the echoed close frame: %v", err)
	}
	select {
	case <-finSent:
	case <-time.After(10 * time.Second):
		t.Fatal("the appliance did not relay the destination's end")
	}
	// The client closes: its FIN, and its kernel's RST right after
	// (what reached its closed socket), the appliance's FIN unacknowledged.
	if err := rc.halfClose(); err != nil {
		t.Fatal(err)
	}
	rc.reset()
	tlsRec, tunRec := connRecords(t, r, rc, 15*time.Second, "the records of the tunnel closed cleanly")
	for _, rec := range []*records.Record{tlsRec, tunRec} {
		if rec.Result != "ok" || rec.Error != "" {
			t.Errorf("the %s record of a tunnel closed cleanly, then reset, says %s, %q (bytes_in %d); want ok", rec.Kind, rec.Result, rec.Error, rec.BytesIn)
		}
	}
	if tunRec.BytesIn != 4 {
		t.Errorf("bytes_in %d; want 4, the echoed close frame", tunRec.BytesIn)
	}
}
