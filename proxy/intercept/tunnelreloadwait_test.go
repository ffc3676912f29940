package intercept_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
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
					took := 3 * time.Second
					if tc.deny {
						took = 200 * time.Millisecond
					}
					select {
					case <-time.After(took):
					case <-ctx.Done():
						return ctx.Err()
					}
					if tc.deny {
						return errors.New("www.example.test does not resolve to 192.0.2.10")
					}
					return nil
				}
			})
			holder.Store(r.pol)
			proxyEnd, serverEnd := testnet.TCPPair(t)
			go func() {
				serverEnd.SetDeadline(time.Now().Add(2 * waitLimit))
				br := bufio.NewReader(serverEnd)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(serverEnd, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				serverEnd.Write(make([]byte, 100))
				serverEnd.CloseWrite() // the destination ends its side
				io.Copy(io.Discard, br)
			}()
			c, sv := r.connectTCP(proxyEnd, httpDest)
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
			pol, err := policy.Parse("policy.yaml", []byte(after))
			if err != nil {
				t.Fatal(err)
			}
			reloaded := time.Now()
			holder.Store(pol)
			if tc.deny {
				// The wait's look (every second) makes the check, which
				// denies: the tunnel ends without the client's end.
				select {
				case <-sv.done:
				case <-time.After(3 * waitLimit):
					t.Fatal("the session did not end")
				}
				if took := time.Since(reloaded); took > 2500*time.Millisecond {
					t.Errorf("the reload's deny ended the tunnel %v after the reload", took.Round(time.Millisecond))
				}
			} else {
				select {
				case <-checked: // the wait's look began the check
				case <-time.After(waitLimit):
					t.Fatal("no destination check after the reload")
				}
				time.Sleep(200 * time.Millisecond)
				fin := time.Now()
				c.CloseWrite() // the client ends its side, the check under way
				select {
				case <-sv.done:
				case <-time.After(3 * waitLimit):
					t.Fatal("the session did not end")
				}
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
