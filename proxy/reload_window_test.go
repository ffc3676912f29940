package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
)

// The reload's window (internal/appliance/reload.go): the observed
// answers forgotten and held (#1), the new policy stored, forgotten again
// (#2). An answer relayed between #1 and the store, under the old policy
// still in force, reads the new generation and, as dns.go allows, is
// handed to ObserveAt; a flow checked again between the store and #2 then
// passed on it, kept that pass at the middle generation and its policy
// pointer as decided, and after #2 nothing checked it again: it went on
// for ever (review r3s27 F1). Held, the answer is not taken in, and the
// flow's check in the window fails.

// windowRig is a destination checker wired to a rig, and an answer of the
// client's own server for allowed.example, already observed, that a
// reload's window lets in again.
type windowRig struct {
	dc     *destcheck.Checker
	ep     string
	answer []byte
}

func newWindowChecker(t *testing.T, dest netip.Addr) *windowRig {
	dc := destcheck.New(destcheck.Config{})
	t.Cleanup(dc.Close)
	w := &windowRig{dc: dc, ep: fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef)),
		answer: aResponse(dnsQuery(7, "allowed.example", 1), dest)}
	dc.Observe(w.ep, w.answer)
	return w
}

// reloadOpen runs the reload up to its store: #1, the answer relayed under
// the old policy at the generation it reads, the store of pol.
func (w *windowRig) reloadOpen(t *testing.T, r *clsRig, pol string) {
	t.Helper()
	w.dc.HoldObserved() // #1
	w.dc.ObserveAt(w.dc.Generation(), w.ep, netip.MustParseAddr("10.0.0.9"), w.answer)
	r.reloadPolicy(t, pol)
}

// reloadClose is the reload's #2.
func (w *windowRig) reloadClose() { w.dc.ForgetObserved() }

// TestReloadWindowBumpedTunnel: a bumped WebSocket tunnel whose bytes come
// between the reload's store and its second forget carries nothing after
// the reload, and its record says why.
func TestReloadWindowBumpedTunnel(t *testing.T) {
	dst := wsEchoTLSServer(t)
	w := newWindowChecker(t, dst.Addr())
	r := newClsRig(t, bumpAnyDNSPolicy, clsOptions{bump: true, check: w.dc.Check, config: wireChecker(w.dc)})
	c, tc := bumpClient(t, r, dst)
	io.WriteString(tc, "GET /ws HTTP/1.1\r\nHost: allowed.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("the upgrade: %v %v; want 101", resp, err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	send := func(msg string) bool {
		if _, err := io.WriteString(tc, msg); err != nil {
			return false
		}
		_, err := io.ReadFull(br, make([]byte, len(msg)))
		return err == nil
	}
	if !send("before") {
		t.Fatal("nothing relayed before the reload")
	}
	w.reloadOpen(t, r, bumpTrustedDNSPolicy)
	inWindow := send("in-window") // the tunnel's recheck
	w.reloadClose()
	relayed := relayedAfter(send)
	c.Close()
	rec := r.record(t, c, "http")
	if inWindow || relayed > 0 {
		t.Errorf("relayed in the window: %v, and %d of 3 after the reload; want none: the pass rested on an answer the reload drops", inWindow, relayed)
	}
	if rec.DestCheck != "mismatch" || rec.Result != "denied" {
		t.Errorf("record dest_check %q result %q error %q; want mismatch, denied", rec.DestCheck, rec.Result, rec.Error)
	}
}

// TestReloadWindowConnectionName: the connection's own name, checked again
// in the window for a request for another Host, holds no pass after it.
func TestReloadWindowConnectionName(t *testing.T) {
	const literal = "\n    - name: literal\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
	dst := wsEchoTLSServer(t)
	w := newWindowChecker(t, dst.Addr())
	r := newClsRig(t, bumpAnyDNSPolicy+literal, clsOptions{bump: true, check: w.dc.Check, config: wireChecker(w.dc)})
	c, tc := bumpClient(t, r, dst)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(tc)
	get := func(path string) int {
		if _, err := io.WriteString(tc, "GET "+path+" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			return -1
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return -1 // closed after a refusal
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if code := get("/before"); code != http.StatusOK {
		t.Fatalf("before the reload: %d", code)
	}
	w.reloadOpen(t, r, bumpTrustedDNSPolicy+literal)
	codes := []int{get("/window")}
	w.reloadClose()
	for i := range 3 {
		codes = append(codes, get(fmt.Sprintf("/after-%d", i)))
	}
	for _, code := range codes {
		if code == http.StatusOK {
			t.Fatalf("requests in the window and after it: %v; want none served (403, then the connection closed)", codes)
		}
	}
	if codes[0] != http.StatusForbidden {
		t.Errorf("the request in the window: %d, want 403", codes[0])
	}
}

// TestReloadWindowSplicedTLS: the same window for a spliced connection
// (tcpreload.go), whose recheck the interceptor's copies.
func TestReloadWindowSplicedTLS(t *testing.T) {
	dst := rawEchoServer(t)
	w := newWindowChecker(t, dst.Addr())
	r := newClsRig(t, anyDNSPolicy, clsOptions{check: w.dc.Check, config: wireChecker(w.dc)})
	c := r.dial(t, dst)
	defer c.Close()
	hello := captureClientHello(t, &tls.Config{ServerName: "allowed.example"})
	c.Write(hello)
	if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	send := func(msg string) bool {
		c.Write([]byte(msg))
		_, err := io.ReadFull(c, make([]byte, len(msg)))
		return err == nil
	}
	w.reloadOpen(t, r, trustedDNSPolicy)
	inWindow := send("in-window")
	w.reloadClose()
	relayed := relayedAfter(send)
	if inWindow || relayed > 0 {
		t.Errorf("relayed in the window: %v, and %d of 3 after the reload; want none", inWindow, relayed)
	}
}

// TestReloadWindowQUIC: a QUIC flow already under way has no such window
// (its recheck, on the packet path, never takes an observed answer:
// TestQUICForgottenAnswerEndsFlow), but one opened in it does: its
// Initial's check, under the new policy already stored, passed on the
// answer let in at the middle generation, and with its policy pointer
// current nothing checked it again after the second forget.
func TestReloadWindowQUIC(t *testing.T) {
	const web = "policy:\n  default: deny\n  rules:\n    - name: web\n      domains: [\"www.example.test\"]\n      action: allow\n"
	flight := quicFirstFlight(t, "www.example.test")
	dst := newUDPSink(t, true)
	dc := destcheck.New(destcheck.Config{})
	t.Cleanup(dc.Close)
	const ep = "vpce-00000000000000007" // FlowInfo.Endpoint 7
	answer := aResponse(dnsQuery(7, "www.example.test", 1), dst.addr().Addr())
	p, h, recs := udpProxy(t, web, func(c *Config) {
		wireChecker(dc)(c)
		c.UDPIdleTimeout = time.Minute
	})
	dc.HoldObserved() // #1
	dc.ObserveAt(dc.Generation(), ep, netip.MustParseAddr("10.0.0.9"), answer)
	h.Store(mustPolicy(t, web)) // the store
	c, _ := startFlow(p, quicClient, dst.addr(), flight...)
	time.Sleep(200 * time.Millisecond) // its Initial's check
	dc.ForgetObserved()                // #2
	c.inject(flight[0])
	rec := oneRecord(t, recs)
	if rec.Kind != "quic" || rec.DestCheck != "mismatch" || rec.Result != "denied" {
		t.Fatalf("record %+v; want the QUIC flow opened in the reload's window denied by its check", rec)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams, want none", n)
	}
}
