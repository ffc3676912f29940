package appliance

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// An HTTP/1.0 client through the appliance, whose origin sends 4 MiB of
// a chunked body, then cuts it: the client gets all 4 MiB, unchunked, and
// then a RST (the close would tell it the body was whole). The client
// starts reading a second after its request, so the answer waits in the
// stack's send buffer: the RST comes once the client has acknowledged it
// all (netstack.Conn.SendQueued), where at once it threw away what was
// still queued (the client had 3.0-4.0 of 4 MiB, the record said all).
func TestHTTP10CutAnswerReachesClientBeforeReset(t *testing.T) {
	tn := newTestNet()
	up := startUpstream(t, tn.server(4), false)
	r := interceptRig(t, up, interceptPolicy)
	const size = 4 << 20
	origin := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n", 2*size)
		c.Write([]byte(strings.Repeat("a", size)))
		time.Sleep(100 * time.Millisecond)
	})
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), origin))(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	must(io.WriteString(c, "GET /cut HTTP/1.0\r\nHost: www.example.test\r\n\r\n"))(t)
	time.Sleep(1000 * time.Millisecond)
	b, err := io.ReadAll(c)
	_, body, _ := strings.Cut(string(b), "\r\n\r\n")
	recs := r.records(func(rs []records.Record) bool {
		for _, x := range rs {
			if x.Kind == "http" && x.Path == "/cut" {
				return true
			}
		}
		return false
	})
	var rec records.Record
	for _, x := range recs {
		if x.Kind == "http" && x.Path == "/cut" {
			rec = x
		}
	}
	t.Logf("client got %d body bytes of %d sent by the origin, end %v; record %s bytes_in %d %q", len(body), size, err, rec.Result, rec.BytesIn, rec.Error)
	if len(body) != size {
		t.Errorf("client got %d of %d body bytes the record counts as %d", len(body), size, rec.BytesIn)
	}
	if !errors.Is(err, syscall.ECONNRESET) && !strings.Contains(fmt.Sprint(err), "reset") {
		t.Errorf("the cut answer ended with %v, not a reset", err)
	}
	if rec.Result != "error" || rec.BytesIn != size {
		t.Errorf("record %s bytes_in %d, want error, %d", rec.Result, rec.BytesIn, size)
	}
}
