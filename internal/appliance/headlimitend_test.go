package appliance

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestRequestHeadJustOverLimitEnds: through the appliance (GWLB simulated,
// its packet stack), an HTTP/1.1 head 1000 bytes over --max-header-bytes
// from a client that keeps its connection open after the 431, plain and
// bumped: the connection ends at once after the 431, and the records say
// the 431 and nothing more (the bumped tls record ok). It was held to the
// head deadline, 10 s, its tls record timeout (proxy/intercept's
// TestH1HeadTooLargeEndsPromptly says why).
func TestRequestHeadJustOverLimitEnds(t *testing.T) {
	tn := newTestNet()
	up := startUpstream(t, tn.server(4), false)
	r := interceptRig(t, up, interceptPolicy)
	ln := must(net.Listen("tcp", netip.AddrPortFrom(r.net.server(3), 0).String()))(t)
	origin := &http.Server{Handler: http.NotFoundHandler()}
	go origin.Serve(ln)
	t.Cleanup(func() { origin.Close() })
	head := "GET /big HTTP/1.1\r\nHost: www.example.test\r\nCookie: " +
		strings.Repeat("a", intercept.DefaultMaxHeaderBytes+1000) + "\r\n\r\n"
	ended := func(t *testing.T, c net.Conn) {
		t.Helper()
		go io.WriteString(c, head)
		// 2 s: the linger's bound; the head deadline is 10 s.
		start := time.Now()
		c.SetReadDeadline(start.Add(2 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("the connection still open %v after the 431 (%v): %q", time.Since(start).Round(time.Millisecond), err, got)
		}
		if !strings.HasPrefix(string(got), "HTTP/1.1 431 ") {
			t.Fatalf("got %q, want a 431", got)
		}
	}
	t.Run("http", func(t *testing.T) {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), must(netip.ParseAddrPort(ln.Addr().String()))(t)))(t)
		defer c.Close()
		ended(t, c)
	})
	t.Run("bumped", func(t *testing.T) {
		tc := must(r.tlsDial(t, up.addr, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}))(t)
		defer tc.Close()
		ended(t, tc)
	})
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "tls") > 0 && countKind(rs, "http") == 2 })
	for _, rec := range recs {
		switch {
		case rec.Kind == "http" && (rec.Status != http.StatusRequestHeaderFieldsTooLarge || rec.Action != "deny"):
			t.Errorf("http record %+v, want the 431's deny", rec)
		case rec.Kind == "tls" && (rec.Result != "ok" || rec.Error != ""):
			t.Errorf("tls record %s %q, want ok: the 431 is the deny record's", rec.Result, rec.Error)
		}
	}
}
