package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck/destchecktest"
)

// wsTunnelOpen opens a WebSocket tunnel for host over the bumped connection
// tc and returns a send that relays msg through the echo and reports
// whether it came back.
func wsTunnelOpen(t *testing.T, tc io.ReadWriter, br *bufio.Reader, host string) (send func(msg string) bool) {
	t.Helper()
	io.WriteString(tc, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("the upgrade: %v %v; want 101", resp, err)
	}
	return func(msg string) bool {
		if _, err := io.WriteString(tc, msg); err != nil {
			return false
		}
		_, err := io.ReadFull(br, make([]byte, len(msg)))
		return err == nil
	}
}

// TestReloadNameCheckSameHostTunnelRecord: a WebSocket tunnel for the
// connection's own name, whose own check passed on the appliance's own
// lookup (it stands after a reload), while the bump's check of that name
// passed on an observed answer alone. The lookup's answer runs out, the
// name stops resolving, and a reload forgets the observed answer: the
// tunnel's next bytes make the name's check again, which fails and ends
// the tunnel. Its record gives that check as its own (same name, same
// address), as a new request's does: dest_check mismatch and the check's
// error, not "ok" next to "fails the destination check" (review r6s27 F1).
func TestReloadNameCheckSameHostTunnelRecord(t *testing.T) {
	dst := wsEchoTLSServer(t)
	srv, err := destchecktest.Start(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	srv.Set("allowed.example", 1, dst.Addr())
	dc := destcheck.New(destcheck.Config{Resolver: srv.Addr(), MinTTL: time.Second, MaxTTL: time.Second, Grace: time.Millisecond, NegativeTTL: time.Second, FailureTTL: time.Millisecond})
	t.Cleanup(dc.Close)
	r := newClsRig(t, bumpAnyDNSPolicy, clsOptions{bump: true, check: dc.Check, config: wireChecker(dc)})
	ep := fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef))
	dc.Observe(ep, aResponse(dnsQuery(7, "allowed.example", 1), dst.Addr()))
	c, tc := bumpClient(t, r, dst) // the bump's check: on the observed answer
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(tc)
	io.WriteString(tc, "GET /first HTTP/1.1\r\nHost: allowed.example\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %v %v", resp, err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	// Another endpoint's check of the name: the appliance's own lookup
	// now holds the address, and the tunnel's check below rests on it.
	if err := dc.Check(context.Background(), "vpce-00000000000000002", "allowed.example", dst.Addr()); err != nil {
		t.Fatalf("the other endpoint's check: %v", err)
	}
	send := wsTunnelOpen(t, tc, br, "allowed.example")
	if !send("before") {
		t.Fatal("nothing relayed before the reload")
	}
	srv.Delete("allowed.example")
	time.Sleep(1500 * time.Millisecond) // the lookup's answer runs out
	reloadForgetting(t, r, dc, bumpTrustedDNSPolicy)
	relayed := relayedAfter(send)
	c.Close()
	ws := httpRecordOf(t, r, "/ws")
	if relayed != 0 {
		t.Errorf("%d of 3 relayed after the reload, want 0", relayed)
	}
	if ws.DestCheck != "mismatch" || ws.Result != "denied" || !strings.Contains(ws.Error, "not an address of allowed.example") ||
		!strings.Contains(ws.Error, "fails the destination check") {
		t.Errorf("the tunnel's record: dest_check %q result %q error %q; want mismatch, denied, the check's error and the reload's", ws.DestCheck, ws.Result, ws.Error)
	}
}

// TestReloadNameCheckOtherHostTunnelRecord: a WebSocket tunnel for another
// Host (allowed by a dest_cidrs rule), ended because the connection's name
// fails its check made again, has that check's error after the note, as a
// new request for another Host has; its own dest_check is none (review
// r6s27 F1). Audited, the tunnel goes on.
func TestReloadNameCheckOtherHostTunnelRecord(t *testing.T) {
	const literal = "\n    - name: literal\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
	const lookupErr = "no address of allowed.example could be looked up"
	for _, mode := range []string{"enforce", "audit"} {
		t.Run(mode, func(t *testing.T) {
			after := bumpTrustedDNSPolicy + literal
			if mode == "audit" {
				after = strings.Replace(bumpTrustedDNSPolicy, "default: deny", "mode: audit\n  default: deny", 1) + literal
			}
			dst := wsEchoTLSServer(t)
			dc := destcheck.New(destcheck.Config{})
			t.Cleanup(dc.Close)
			r := newClsRig(t, bumpAnyDNSPolicy+literal, clsOptions{bump: true, check: dc.Check, config: wireChecker(dc)})
			ep := fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef))
			dc.Observe(ep, aResponse(dnsQuery(7, "allowed.example", 1), dst.Addr()))
			c, tc := bumpClient(t, r, dst)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			send := wsTunnelOpen(t, tc, bufio.NewReader(tc), "127.0.0.1")
			if !send("before") {
				t.Fatal("nothing relayed before the reload")
			}
			reloadForgetting(t, r, dc, after)
			relayed := relayedAfter(send)
			c.Close()
			ws := httpRecordOf(t, r, "/ws")
			if mode == "audit" {
				if relayed != 3 || ws.Result != "ok" {
					t.Errorf("audited: %d of 3 relayed, result %q; want 3, ok", relayed, ws.Result)
				}
				return
			}
			if relayed != 0 || ws.Result != "denied" || ws.DestCheck != "" ||
				!strings.Contains(ws.Error, "the connection's name (SNI \"allowed.example\") is no longer allowed") || !strings.Contains(ws.Error, lookupErr) {
				t.Errorf("%d of 3 relayed; the tunnel's record: dest_check %q result %q error %q; want 0, none of its own, denied, the note and the name's check's error",
					relayed, ws.DestCheck, ws.Result, ws.Error)
			}
		})
	}
}

// relayedAfter sends three messages over a tunnel (wsTunnelOpen's send)
// after a reload, and returns how many came back.
func relayedAfter(send func(msg string) bool) int {
	relayed := 0
	for i := range 3 {
		if send(fmt.Sprintf("after-%d", i)) {
			relayed++
		}
	}
	return relayed
}

// reloadForgetting reloads r to pol in the appliance's order for a changed
// file: the observed answers held (forgotten, none taken in), the policy
// stored, then forgotten again and taken in once more (Reload).
func reloadForgetting(t *testing.T, r *clsRig, dc *destcheck.Checker, pol string) {
	t.Helper()
	dc.HoldObserved()
	r.reloadPolicy(t, pol)
	dc.ForgetObserved()
}
