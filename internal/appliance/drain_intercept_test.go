package appliance

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestDrainEndsInterceptedLongPoll: a cleartext HTTP long poll, to an
// origin that read the request and never answers, is still in flight when
// the drain's time for flows is up. Closing the stacks must end its
// session at once, close the origin's connection, and write its record to
// the access log before the appliance exits (the records are written out
// only after Proxy.Wait, which must not wait out the drain for it). Before
// the client watch the session outlived the stacks: the drain waited to
// its deadline and logged the record as lost.
func TestDrainEndsInterceptedLongPoll(t *testing.T) {
	r := newRig(t, nil, nil)
	got, closed := make(chan struct{}, 1), make(chan struct{}, 1)
	origin := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		got <- struct{}{}
		io.Copy(io.Discard, c) // never answers, until the appliance closes it
		closed <- struct{}{}
	})
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), origin))(t)
	defer c.Close()
	fmt.Fprintf(c, "GET /poll HTTP/1.1\r\nHost: poll.example\r\n\r\n")
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the request did not reach the origin")
	}
	start := time.Now()
	r.cancel()
	select {
	case <-r.done:
		r.done <- nil // for the cleanup's wait
	case <-time.After(rigDrain + 3*time.Second):
		t.Fatal("the appliance did not stop within its drain")
	}
	t.Logf("the appliance stopped %v after the drain began (drain %v)", time.Since(start).Round(time.Millisecond), rigDrain)
	select {
	case <-closed:
	case <-time.After(time.Second):
		t.Error("the origin's connection is still open after the appliance stopped")
	}
	rec := findRecord(r.readRecords(), "http", origin)
	if rec == nil {
		t.Fatalf("no record of the long poll in the access log: %s", summarizeRecords(r.readRecords()))
	}
	if rec.Result != "reset" || rec.Status != 0 || rec.Path != "/poll" || !strings.Contains(rec.Error, "appliance's shutdown") {
		t.Errorf("the long poll's record: result %q, status %d, path %q, error %q; want reset, no status, /poll, the shutdown named",
			rec.Result, rec.Status, rec.Path, rec.Error)
	}
}
