package intercept_test

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// TestBodyEndedByShutdownNotMalformed: an HTTP/1 request body whose
// client connection ends short of its Content-Length while the
// appliance's packet stacks close (Config.ShuttingDown) was cut by the
// appliance, not by the client: its record says reset, ended by the
// appliance's shutdown, not the 400 "malformed request body" of a client
// that half-closed mid-body, which would blame a client that sent
// nothing wrong.
func TestBodyEndedByShutdownNotMalformed(t *testing.T) {
	var shutting atomic.Bool
	o := &earlyOrigin{t: t, readFirst: true}
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.ShuttingDown = shutting.Load })
	c, _ := chunkClient(t, r, o, false)
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 100\r\n\r\n"+string(make([]byte, 50)))
	shutting.Store(true) // the stacks close: the client's side of the connection ends
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rec := awaitRecord(t, r, "/a", 2*time.Second)
	if rec == nil {
		t.Fatal("no record of the request")
	}
	if rec.Status == 400 || strings.Contains(rec.Error, "malformed") {
		t.Errorf("record %d %s %q: the appliance's shutdown taken for a malformed body", rec.Status, rec.Result, rec.Error)
	}
	if rec.Result != "reset" || !strings.Contains(rec.Error, "shutdown") {
		t.Errorf("record %d %s %q, want reset, ended by the appliance's shutdown", rec.Status, rec.Result, rec.Error)
	}
}
