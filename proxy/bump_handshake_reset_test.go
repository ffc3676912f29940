package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// resetOnFinished passes the client's first write (its ClientHello) on,
// and resets the connection in place of the second (its Finished): the
// appliance's side of the handshake then sees its client go away without
// an alert.
type resetOnFinished struct {
	*rawClient
	writes atomic.Int32
}

func (c *resetOnFinished) Write(b []byte) (int, error) {
	if c.writes.Add(1) == 1 {
		return c.rawClient.Write(b)
	}
	c.reset()
	return 0, errors.New("reset instead of the Finished")
}

// TestBumpedClientResetInHandshakeRecordedReset: a bumped TLS 1.3 client
// that resets at the end of its handshake, without an alert (a client
// killed, or one that reset right after its Finished, which the RST
// discards), is recorded as reset, as records.md says of a client that
// resets an intercepted connection, not as a failed handshake (result
// error), which is for a client that refuses the appliance's leaf with an
// alert. The handshake's error stays in error.
func TestBumpedClientResetInHandshakeRecordedReset(t *testing.T) {
	for i := range 5 {
		r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {}, "http/1.1")
		c := &resetOnFinished{rawClient: dialRaw(t, r.client, r.dest)}
		tc := tls.Client(c, &tls.Config{ServerName: "big.example", RootCAs: r.roots, MinVersion: tls.VersionTLS13})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := tc.HandshakeContext(ctx); err == nil {
			t.Fatal("the handshake completed without the client's Finished")
		}
		cancel()
		rec, ok := r.tlsRecord(t, 5*time.Second)
		if !ok {
			t.Fatal("the bumped connection has no record")
		}
		t.Logf("run %d: result %s, error %q", i, rec.Result, rec.Error)
		if rec.Action != "bump" || rec.Result != "reset" || !strings.HasPrefix(rec.Error, "client TLS handshake: ") {
			t.Errorf("run %d: record action %q, result %q, error %q; want bump, reset, the handshake's error", i, rec.Action, rec.Result, rec.Error)
		}
	}
}

var _ net.Conn = (*resetOnFinished)(nil)
