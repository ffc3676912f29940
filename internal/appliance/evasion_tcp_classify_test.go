package appliance

// Classification evasions through the whole data path (GENEVE, the
// appliance's stacks, the proxy), tried as a hostile client would: first
// bytes that a real server accepts and a strict classifier calls "other",
// which would relay them untouched past the rules about names.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// evShapes are ClientHellos as crypto/tls and OpenSSL servers accept them
// and the classifier once did not: a first record version outside 3.0–3.4,
// or a warning alert first.
var evShapes = []struct {
	name    string
	version uint16
	before  []byte
}{
	{"version 0x0305", 0x0305, nil},
	{"version 0x0000", 0x0000, nil},
	{"warning alert first", 0x0301, []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 90}},
}

// evRecord waits for the record of kind from the client's port. It fails
// t, the (sub)test that asks, rather than the rig's own test.
func evRecord(t *testing.T, r *rig, c net.Conn, kind string) records.Record {
	t.Helper()
	port := c.LocalAddr().(*net.TCPAddr).AddrPort().Port()
	deadline := time.Now().Add(recordsWait)
	for {
		recs := r.readRecords()
		for _, x := range recs {
			if x.Kind == kind && x.ClientPort == port {
				return x
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s record from client port %d after %s; got %s", kind, port, recordsWait, summarizeRecords(recs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEvasionTLSShapesThroughAppliance(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy) // default bump; evil.example.test denied
	for _, sh := range evShapes {
		t.Run(sh.name+"/denied", func(t *testing.T) {
			c := must(r.client.DialTCP(ctxT(t, 5*time.Second), up.addr))(t)
			defer c.Close()
			tc := tls.Client(testnet.RewriteFirstRecord(c, sh.version, sh.before),
				&tls.Config{ServerName: "evil.example.test", RootCAs: r.caPool()})
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err == nil || !strings.Contains(err.Error(), "access denied") {
				t.Errorf("handshake for a denied name: %v, want an access_denied alert", err)
			}
			if rec := evRecord(t, r, c, "tls"); rec.Action != "deny" || rec.Rule != "no-evil" || rec.SNI != "evil.example.test" {
				t.Errorf("record %+v", rec)
			}
		})
		t.Run(sh.name+"/bumped", func(t *testing.T) {
			c := must(r.client.DialTCP(ctxT(t, 5*time.Second), up.addr))(t)
			defer c.Close()
			tc := tls.Client(testnet.RewriteFirstRecord(c, sh.version, sh.before),
				&tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				t.Fatalf("handshake with the appliance's CA trusted: %v (relayed instead of bumped?)", err)
			}
			fmt.Fprintf(tc, "GET /hello?who=ev HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if !strings.HasPrefix(string(body), "hello ev over") {
				t.Errorf("through the bump: %q", body)
			}
			tc.Close()
			if rec := evRecord(t, r, c, "tls"); rec.Action != "bump" || rec.SNI != "www.example.test" || rec.UpstreamVerify != "ok" {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

// A blank line before the request line, which servers ignore (RFC 9112
// §2.2), towards a lenient origin with a denied Host: the appliance
// answers 403 and records the Host.
func TestEvasionBlankLineThroughAppliance(t *testing.T) {
	up := startUpstream(t, newTestNet().server(3), false)
	r := interceptRig(t, up, interceptPolicy)
	// An origin that, like nginx, skips blank lines before the request.
	origin := listenTCP(t, netip.AddrPortFrom(r.net.server(4), 0), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for {
			b, err := br.Peek(1)
			if err != nil {
				return
			}
			if b[0] != '\r' && b[0] != '\n' {
				break
			}
			br.Discard(1)
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\nhello %s", len("hello ")+len(req.Host), req.Host)
	})
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), origin))(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "\r\nGET / HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || strings.Contains(string(body), "hello") {
		t.Errorf("a blank line, then a denied Host: %d %q, want 403 from the appliance", resp.StatusCode, body)
	}
	if rec := evRecord(t, r, c, "http"); rec.Action != "deny" || rec.Host != "evil.example.test" || rec.Rule != "no-evil" {
		t.Errorf("record %+v", rec)
	}
}
