package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// A cleartext tunnel's destination ended its side, and the tunnel waits
// for its client's end (relayDestinationEnd) when a reload turns the
// destination check on, its lookup slow: the check is made off the wait
// (reloadLook), which sees the client's end at once, not once the lookup
// is over (review r5s27 F4); a check that denies still ends the tunnel,
// denied.
func TestTunnelDestinationEndWaitNotHeldByReloadCheck(t *testing.T) {
	const before = `
policy:
  destination_check: off
  default: deny
  rules:
    - name: www
      domains: ["www.example.test"]
      action: bump
`
	const after = `
policy:
  default: deny
  rules:
    - name: www
      domains: ["www.example.test"]
      action: bump
`
	for _, tc := range []struct {
		name string
		deny bool
	}{{"client ends during the check", false}, {"check denies", true}} {
		t.Run(tc.name, func(t *testing.T) {
			checked := make(chan struct{}, 4)
			var holder policy.Holder
			r := newRig(t, before, func(c *intercept.Config) {
				c.Policy = &holder
				c.DestinationCheck = func(ctx context.Context, _, _ string, _ netip.Addr) error {
					checked <- struct{}{}
					return slowCheck(ctx, tc.deny, "www.example.test does not resolve to 192.0.2.10")
				}
			})
			holder.Store(r.pol)
			proxyEnd, serverEnd := testnet.TCPPair(t)
			go answerUpgradeThenEnd(serverEnd, serverEnd) // the destination ends its side
			c, sv := r.connectTCP(proxyEnd, httpDest)
			upgradeToEnd(t, c)
			pol, err := policy.Parse("policy.yaml", []byte(after))
			if err != nil {
				t.Fatal(err)
			}
			reloaded := time.Now()
			holder.Store(pol)
			if tc.deny {
				// The wait's look (every second) makes the check, which
				// denies: the tunnel ends without the client's end.
				awaitDeniedByReload(t, sv, reloaded)
			} else {
				select {
				case <-checked: // the wait's look began the check
				case <-time.After(waitLimit):
					t.Fatal("no destination check after the reload")
				}
				time.Sleep(200 * time.Millisecond)
				fin := time.Now()
				c.CloseWrite() // the client ends its side, the check under way
				awaitSessionEnd(t, sv)
				if took := time.Since(fin); took > 300*time.Millisecond {
					t.Errorf("the client's end ended the tunnel %v after it, the reload's check under way", took.Round(time.Millisecond))
				}
			}
			hs := ofKind(r.records(), "http")
			if len(hs) != 1 {
				t.Fatalf("http records: %+v", hs)
			}
			h := hs[0]
			if tc.deny {
				if h.Result != "denied" || h.DestCheck != "mismatch" || h.Action != "deny" {
					t.Errorf("http record: result %q, dest_check %q, action %q (%q), want denied, mismatch, deny", h.Result, h.DestCheck, h.Action, h.Error)
				}
			} else if h.Result != "ok" || h.DestCheck != "" || h.Error != "" {
				// The check did not answer before the tunnel's end: it
				// ended nothing, nor is it the record's.
				t.Errorf("http record: result %q, dest_check %q, error %q, want ok, none, none", h.Result, h.DestCheck, h.Error)
			}
		})
	}
}

// TestBumpedTunnelDestinationEndWaitNotHeldByNameCheck is
// TestTunnelDestinationEndWaitNotHeldByReloadCheck for a bumped tunnel,
// whose recheck makes two checks back to back: its request's name's, then
// the connection's own name's (its upstream certificate, accepted
// unverified by the rule, proves neither). The second is slow: the
// client's end ends the tunnel at once all the same, and the check,
// cancelled, decides nothing: both records ok, the connection's name not
// taken for denied; one that fails ends the tunnel, both records denied.
func TestBumpedTunnelDestinationEndWaitNotHeldByNameCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		deny bool
	}{{"client ends during the name's check", false}, {"the name's check denies", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var holder policy.Holder
			checks := make(chan struct{}, 8)
			r := newRig(t, fmt.Sprintf(legacyPolicy, "destination_check: off"), func(c *intercept.Config) {
				c.Policy = &holder
				n := 0
				c.DestinationCheck = func(ctx context.Context, _, name string, _ netip.Addr) error {
					n++ // one at a time: under the recheck's lock
					checks <- struct{}{}
					if n == 1 {
						return nil // the request's own name: at once
					}
					return slowCheck(ctx, tc.deny, name+" resolves to 203.0.113.9")
				}
			})
			holder.Store(r.pol)
			proxyEnd, serverEnd := testnet.TCPPair(t)
			end := tls.Server(serverEnd, &tls.Config{Certificates: []tls.Certificate{*r.strangerLeaf("www.example.test")}, NextProtos: []string{"http/1.1"}})
			// The destination ends its side: close_notify, and its FIN.
			go answerUpgradeThenEnd(end, end, serverEnd)
			c, sv := r.connectTCP(proxyEnd, tlsDest)
			tc2 := tls.Client(c, &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}})
			upgradeToEnd(t, tc2)
			after, err := policy.Parse("policy.yaml", []byte(fmt.Sprintf(legacyPolicy, "destination_check: dns")))
			if err != nil {
				t.Fatal(err)
			}
			reloaded := time.Now()
			holder.Store(after)
			if tc.deny {
				awaitDeniedByReload(t, sv, reloaded)
			} else {
				for i := range 2 {
					select {
					case <-checks: // the request's name's, then the connection's
					case <-time.After(waitLimit):
						t.Fatalf("%d destination checks after the reload, want 2", i)
					}
				}
				time.Sleep(200 * time.Millisecond)
				fin := time.Now()
				tc2.CloseWrite() // the client ends its side, the name's check under way
				c.CloseWrite()
				awaitSessionEnd(t, sv)
				if took := time.Since(fin); took > 300*time.Millisecond {
					t.Errorf("the client's end ended the tunnel %v after it, the name's check under way", took.Round(time.Millisecond))
				}
			}
			recs := r.records()
			for _, kind := range []string{"http", "tls"} {
				ks := ofKind(recs, kind)
				if len(ks) != 1 {
					t.Fatalf("%s records %+v, want one", kind, ks)
				}
				rec := ks[0]
				if tc.deny {
					if rec.Result != "denied" || rec.Action != "deny" || rec.Policy != after.ID() || rec.DestCheck != "mismatch" ||
						!strings.Contains(rec.Error, "www.example.test resolves to 203.0.113.9") {
						t.Errorf("%s record: result %q action %q policy %q dest_check %q error %q; want denied under %q, the name's check failed",
							kind, rec.Result, rec.Action, rec.Policy, rec.DestCheck, rec.Error, after.ID())
					}
				} else if rec.Result != "ok" || rec.Action != "bump" || rec.Policy != r.pol.ID() || rec.DestCheck == "mismatch" ||
					strings.Contains(rec.Error, "policy reload") {
					t.Errorf("%s record: result %q action %q policy %q dest_check %q error %q; want ok, bump, under %q, nothing of the reload's check",
						kind, rec.Result, rec.Action, rec.Policy, rec.DestCheck, rec.Error, r.pol.ID())
				}
			}
		})
	}
}

// slowCheck is a destination check that takes 3 s (cancellable) and
// passes, or with deny takes 200 ms and fails with denied.
func slowCheck(ctx context.Context, deny bool, denied string) error {
	took := 3 * time.Second
	if deny {
		took = 200 * time.Millisecond
	}
	select {
	case <-time.After(took):
	case <-ctx.Done():
		return ctx.Err()
	}
	if deny {
		return errors.New(denied)
	}
	return nil
}

// answerUpgradeThenEnd answers c's WebSocket upgrade, sends 100 bytes,
// ends its side by closing the writes of ends in order, and reads the
// client's bytes to their end.
func answerUpgradeThenEnd(c net.Conn, ends ...interface{ CloseWrite() error }) {
	c.SetDeadline(time.Now().Add(2 * waitLimit))
	br := bufio.NewReader(c)
	if _, err := http.ReadRequest(br); err != nil {
		return
	}
	io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	c.Write(make([]byte, 100))
	for _, e := range ends {
		e.CloseWrite()
	}
	io.Copy(io.Discard, br)
}

// upgradeToEnd upgrades c to a WebSocket tunnel and reads the
// destination's 100 bytes and its end (answerUpgradeThenEnd's).
func upgradeToEnd(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(3 * waitLimit))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: www.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if n, err := io.Copy(io.Discard, br); n != 100 || err != nil {
		t.Fatalf("the destination's 100 bytes and end: got %d, %v", n, err)
	}
}

// awaitSessionEnd waits for sv's session to end.
func awaitSessionEnd(t *testing.T, sv *served) {
	t.Helper()
	select {
	case <-sv.done:
	case <-time.After(3 * waitLimit):
		t.Fatal("the session did not end")
	}
}

// awaitDeniedByReload waits for sv's tunnel to end, within 2.5 s of the
// reload: its check's deny, made off the wait.
func awaitDeniedByReload(t *testing.T, sv *served, reloaded time.Time) {
	t.Helper()
	awaitSessionEnd(t, sv)
	if took := time.Since(reloaded); took > 2500*time.Millisecond {
		t.Errorf("the reload's deny ended the tunnel %v after the reload", took.Round(time.Millisecond))
	}
}
