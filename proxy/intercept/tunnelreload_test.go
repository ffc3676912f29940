package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// wwwByName allows www.example.test by its name; check fills in its
// destination_check.
func wwwByName(check string) string {
	return "policy:\n  default: deny\n  destination_check: " + check +
		"\n  rules:\n    - name: www\n      domains: [\"www.example.test\"]\n      action: allow\n"
}

// TestReloadEndsWebSocketTunnel: a WebSocket tunnel opened before a reload
// used to carry bytes both ways for as long as either end kept it busy,
// whatever the reload said of its name: it has no next request for the
// reload to reach. It is now decided again, on the upgrade request's
// name, on its next bytes after a reload, destination check included: one
// the new policy denies, or whose never-made check now fails under an
// enforcing policy, has both ends reset, and the upgrade's record says the
// reload denied it, by the new policy. One the new policy still allows
// goes on.
func TestReloadEndsWebSocketTunnel(t *testing.T) {
	fail := func(_ context.Context, _, name string, dest netip.Addr) error {
		return errors.New(name + " does not resolve to " + dest.String())
	}
	pass := func(context.Context, string, string, netip.Addr) error { return nil }
	for _, tc := range []struct {
		name, before, after, rule, destCheck string
		ends                                 bool
		check                                func(context.Context, string, string, netip.Addr) error
	}{
		{"denied", testPolicy, tightenedPolicy, "no-www", "", true, fail},
		{"still-allowed", testPolicy, "policy: {default: allow}\n", "", "", false, fail},
		{"check-off-to-dns", wwwByName("off"), wwwByName("dns"), "www", "mismatch", true, fail},
		// The check the reload asks for, made then, passes: the tunnel
		// goes on (it used to be cut all the same).
		{"check-off-to-dns-passing", wwwByName("off"), wwwByName("dns"), "www", "", false, pass},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var holder policy.Holder
			r := newRig(t, tc.before, func(c *intercept.Config) { c.Policy = &holder; c.DestinationCheck = tc.check })
			holder.Store(r.pol)
			upEnd, got, upEnded := echoUpgradeUpstream(t)
			c, sv := r.connectTCP(upEnd, httpDest)
			c.SetDeadline(time.Now().Add(waitLimit))
			io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			<-got
			const before = "before the reload"
			io.WriteString(c, before)
			if _, err := io.ReadFull(br, make([]byte, len(before))); err != nil {
				t.Fatalf("the tunnel carried nothing before the reload: %v", err)
			}
			after, err := policy.Parse("policy.yaml", []byte(tc.after))
			if err != nil {
				t.Fatal(err)
			}
			holder.Store(after)
			io.WriteString(c, "exfil after reload")
			buf := make([]byte, len("exfil after reload"))
			_, err = io.ReadFull(br, buf)
			if !tc.ends {
				if err != nil {
					t.Fatalf("a tunnel the new policy still allows was cut: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("the tunnel to a name the reload ends carried %q both ways after the reload", buf)
			}
			select {
			case upErr := <-upEnded:
				if !errors.Is(upErr, syscall.ECONNRESET) {
					t.Errorf("the destination's connection ended with %v, want a reset", upErr)
				}
			case <-time.After(waitLimit):
				t.Error("the destination's connection was not ended")
			}
			c.Close()
			sv.waitDoneOnce(t)
			recs := ofKind(r.records(), "http")
			if len(recs) != 1 {
				t.Fatalf("http records %+v, want the upgrade's one", recs)
			}
			rec := recs[0]
			if !rec.WebSocket || rec.Action != "deny" || rec.Rule != tc.rule || rec.Result != "denied" ||
				rec.Policy != after.ID() || rec.DestCheck != tc.destCheck || !strings.Contains(rec.Error, "ended by a policy reload") ||
				rec.BytesOut != int64(len(before)) || rec.BytesIn != int64(len(before)) {
				t.Fatalf("record %+v; want the tunnel denied by rule %q of the reload's policy %q (dest_check %q), only the bytes before it relayed",
					rec, tc.rule, after.ID(), tc.destCheck)
			}
		})
	}
}

// echoUpgradeUpstream is rawUpgradeUpstream that also says how the
// destination's end of the tunnel ended: the error of its last read.
func echoUpgradeUpstream(t *testing.T) (net.Conn, <-chan string, <-chan error) {
	return tlsEchoUpgradeUpstream(t, nil)
}

// TestReloadEndsBumpedWebSocketTunnelTLSRecord: a reload that ends a
// WebSocket tunnel on a bumped connection gives the connection's tls
// record what the upgrade's record says: action deny, result denied, and
// the new policy's rule and ID. It used to keep action bump and the old
// rule and policy beside result denied, a pairing records.md rules out.
func TestReloadEndsBumpedWebSocketTunnelTLSRecord(t *testing.T) {
	reloadEndsBumpedTunnel(t, "www.example.test", "ended by a policy reload")
}

// reloadEndsBumpedTunnel opens a bumped WebSocket tunnel for host on a
// connection to www.example.test, reloads to tightenedPolicy (no-www), and
// checks that the tunnel carries no more and that both its records say it
// was denied by the reload, their error holding wantErr.
func reloadEndsBumpedTunnel(t *testing.T, host, wantErr string) {
	t.Helper()
	var holder policy.Holder
	r := newRig(t, testPolicy, func(c *intercept.Config) { c.Policy = &holder })
	holder.Store(r.pol)
	upEnd, got, _ := tlsEchoUpgradeUpstream(t, r.upLeaf("www.example.test"))
	c, sv := r.connectTCP(upEnd, tlsDest)
	tc := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(tc, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	<-got
	io.WriteString(tc, "before")
	if _, err := io.ReadFull(br, make([]byte, len("before"))); err != nil {
		t.Fatalf("the tunnel carried nothing before the reload: %v", err)
	}
	after, err := policy.Parse("policy.yaml", []byte(tightenedPolicy))
	if err != nil {
		t.Fatal(err)
	}
	holder.Store(after)
	io.WriteString(tc, "after")
	if _, err := io.ReadFull(br, make([]byte, len("after"))); err == nil {
		t.Fatal("the tunnel carried bytes both ways after the reload denied its name")
	}
	c.Close()
	sv.waitDoneOnce(t)
	recs := r.records()
	for _, kind := range []string{"http", "tls"} {
		ks := ofKind(recs, kind)
		if len(ks) != 1 {
			t.Fatalf("%s records %+v, want one", kind, ks)
		}
		if rec := ks[0]; rec.Action != "deny" || rec.Rule != "no-www" || rec.Result != "denied" || rec.Policy != after.ID() ||
			!strings.Contains(rec.Error, wantErr) {
			t.Errorf("%s record %+v; want deny, rule no-www, result denied, policy %s (the reload's), error with %q", kind, rec, after.ID(), wantErr)
		}
	}
	// The tunnel's bytes, both ways: the client read the echo of "before"
	// (its record used to be written before the write that gave it the
	// echo had returned: TestTunnelRecordWaitsForWriteToClient).
	if rec := ofKind(recs, "http")[0]; rec.BytesOut != int64(len("before")) || rec.BytesIn != int64(len("before")) {
		t.Errorf("tunnel record bytes_out %d, bytes_in %d; want %d each way, what went before the reload", rec.BytesOut, rec.BytesIn, len("before"))
	}
}

// tlsEchoUpgradeUpstream is echoUpgradeUpstream over TLS with cert (nil:
// cleartext).
func tlsEchoUpgradeUpstream(t *testing.T, cert *tls.Certificate) (net.Conn, <-chan string, <-chan error) {
	proxyEnd, serverEnd := testnet.TCPPair(t)
	var end net.Conn = serverEnd
	if cert != nil {
		end = tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}})
	}
	got, ended := make(chan string, 1), make(chan error, 1)
	go func() {
		defer end.Close()
		end.SetDeadline(time.Now().Add(2 * waitLimit))
		br := bufio.NewReader(end)
		req, err := http.ReadRequest(br)
		if err != nil {
			got <- "nothing: " + err.Error()
			return
		}
		got <- req.Method + " " + req.URL.Path
		io.WriteString(end, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		buf := make([]byte, 4096)
		for {
			n, err := br.Read(buf)
			if err != nil {
				ended <- err
				return
			}
			if _, err := end.Write(buf[:n]); err != nil {
				ended <- err
				return
			}
		}
	}()
	return proxyEnd, got, ended
}
