package intercept_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// TestTunnelDestinationEndWaitSeesUpstream: the wait that follows a
// destination's end of its side, relayed to a client that has not ended
// its own (relayDestinationEnd), ends when the destination resets its
// connection after its close_notify (the tunnel's record and the tls
// record say the destination's reset), and when a policy reload denies
// the tunnel meanwhile (both records denied). Nothing read or wrote the
// tunnel then: the wait ran its whole bound (60 s by default) and both
// records said the client had not ended its side (timeout).
func TestTunnelDestinationEndWaitSeesUpstream(t *testing.T) {
	const bound = 8 * time.Second
	defer intercept.SetTunnelLingerBound(bound)()
	for _, tc := range []struct {
		name   string
		reload bool
	}{{"reset after close_notify", false}, {"reload denies", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var holder policy.Holder
			r := newRig(t, testPolicy, func(c *intercept.Config) { c.Policy = &holder })
			holder.Store(r.pol)
			proxyEnd, serverEnd := testnet.TCPPair(t)
			srv := tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*r.upLeaf("www.example.test")}, NextProtos: []string{"http/1.1"}})
			done := make(chan struct{})
			defer close(done)
			go func() {
				defer srv.Close()
				srv.SetDeadline(time.Now().Add(2 * waitLimit))
				br := bufio.NewReader(srv)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(srv, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				srv.Write(make([]byte, 100))
				srv.CloseWrite() // close_notify
				serverEnd.CloseWrite()
				if !tc.reload {
					time.Sleep(50 * time.Millisecond)
					serverEnd.SetLinger(0)
					serverEnd.Close()
				}
				<-done
			}()
			c, sv := r.connectTCP(proxyEnd, tlsDest)
			cl := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
			cl.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(cl, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			br := bufio.NewReader(cl)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			if n, err := io.Copy(io.Discard, br); n != 100 || err != nil {
				t.Fatalf("the client got %d bytes and %v, want 100 and the destination's end", n, err)
			}
			start := time.Now()
			var after *policy.Policy
			if tc.reload {
				if after, err = policy.Parse("policy.yaml", []byte(tightenedPolicy)); err != nil {
					t.Fatal(err)
				}
				holder.Store(after)
			}
			// The client sends nothing more, nor ends its side.
			select {
			case <-sv.done:
			case <-time.After(bound + 5*time.Second):
				t.Fatal("the tunnel did not end")
			}
			if took := time.Since(start); took > bound/2 {
				t.Errorf("the tunnel ended %v after the destination's end, want within a look or two (the bound is %v)", took, bound)
			}
			if !tc.reload {
				// The destination's reset reaches the client as one, not
				// as a lingering close that takes (and drops) what it
				// still sends: its upload is lost, and it must learn so
				// (the destination's close_notify and FIN came before).
				var werr error
				for end := time.Now().Add(waitLimit); werr == nil && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
					_, werr = c.Write([]byte("more of the upload"))
				}
				if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
					t.Errorf("the client's writes after the destination's reset: %v, want the connection reset", werr)
				}
			}
			c.Close()
			recs := r.records()
			for _, kind := range []string{"http", "tls"} {
				ks := ofKind(recs, kind)
				if len(ks) != 1 {
					t.Fatalf("%s records %+v, want one", kind, ks)
				}
				rec := ks[0]
				t.Logf("%s record: %s %q", kind, rec.Result, rec.Error)
				switch {
				case tc.reload && (rec.Result != "denied" || rec.Rule != "no-www" || !strings.Contains(rec.Error, "ended by a policy reload")):
					t.Errorf("%s record %s %q rule %q; want denied by the reload's no-www", kind, rec.Result, rec.Error, rec.Rule)
				case !tc.reload && (rec.Result != "reset" || !strings.Contains(rec.Error, "then reset its connection") || strings.Contains(rec.Error, "the client had not ended")):
					t.Errorf("%s record %s %q; want the destination's reset after its end", kind, rec.Result, rec.Error)
				}
			}
		})
	}
}
