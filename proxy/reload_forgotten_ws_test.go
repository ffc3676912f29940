package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// bumpAnyDNSPolicy and bumpTrustedDNSPolicy are anyDNSPolicy and
// trustedDNSPolicy with allowed.example bumped, and its destination's
// certificate accepted unverified: the destination check is then all that
// ties the name to the address, for the connection and its requests alike.
var (
	bumpAnyDNSPolicy     = bumpUnverified(anyDNSPolicy)
	bumpTrustedDNSPolicy = bumpUnverified(trustedDNSPolicy)
)

func bumpUnverified(doc string) string {
	return strings.Replace(doc, "action: splice", "action: bump\n      allow_unverified_upstream: true", 1)
}

// wsEchoTLSServer is a WebSocket destination on loopback over TLS with a
// certificate for allowed.example from a CA nobody trusts: it answers an
// upgrade with 101, then echoes what the tunnel carries, and any other
// request with 200 "hello".
func wsEchoTLSServer(t *testing.T) netip.AddrPort {
	ca := clsMust(certs.Generate("untrusted websocket destination CA"))(t)
	leaf := clsMust(clsMust(certs.NewMinter(ca, certs.MinterOptions{}))(t).LeafFor([]string{"allowed.example"}, nil))(t)
	conf := &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}}
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		tc := tls.Server(c, conf)
		br := bufio.NewReader(tc)
		for range 10 {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Header.Get("Upgrade") == "" {
				io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
				continue
			}
			io.WriteString(tc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
			io.Copy(tc, br)
			return
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// bumpClient dials dst through r and completes TLS for allowed.example
// with the appliance's leaf.
func bumpClient(t *testing.T, r *clsRig, dst netip.AddrPort) (*net.TCPConn, *tls.Conn) {
	t.Helper()
	c := r.dial(t, dst)
	t.Cleanup(func() { c.Close() })
	roots := x509.NewCertPool()
	roots.AddCert(r.ca.Certificate())
	return c, tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: roots, NextProtos: []string{"http/1.1"}})
}

// TestBumpedWebSocketForgottenAnswerRechecked: the attack of
// TestSplicedTLSForgottenAnswerRechecked, on a bumped WebSocket tunnel. A
// client whose own DNS server (allowed under the old policy) answered
// allowed.example with the attacker's address opened a bumped WebSocket to
// it; the operator took the clients' own DNS servers away and reloaded,
// which forgot that answer; the tunnel went on for ever: the interceptor
// took its past "ok" as holding (found by review r1bypass F4, left for
// the interceptor). Now the tunnel is checked again on its next bytes and
// ends, its record saying the reload ended it for its destination check.
// Audited, it goes on and its record says the check failed. A tunnel whose
// check passed on the appliance's own lookup, or whose answer the reload
// did not forget (the same file again), goes on unchecked.
func TestBumpedWebSocketForgottenAnswerRechecked(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resolver bool // the appliance's own lookup finds the address
		observed bool // the client was told the address
		forget   bool // the reload forgets the observed answers
		after    string
		ends     bool
	}{
		{"observed-forgotten", false, true, true, bumpTrustedDNSPolicy, true},
		{"observed-forgotten-audit", false, true, true, strings.Replace(bumpTrustedDNSPolicy, "default: deny", "mode: audit\n  default: deny", 1), false},
		{"observed-kept", false, true, false, bumpAnyDNSPolicy, false},
		{"looked-up-forgotten", true, false, true, bumpTrustedDNSPolicy, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := wsEchoTLSServer(t)
			var cfg destcheck.Config
			if tc.resolver {
				cfg.Resolver = lookupResolver(t, "allowed.example", dst.Addr())
			}
			dc := destcheck.New(cfg)
			t.Cleanup(dc.Close)
			r := newClsRig(t, bumpAnyDNSPolicy, clsOptions{bump: true, check: dc.Check, config: wireChecker(dc)})
			if tc.observed {
				ep := fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef))
				dc.Observe(ep, aResponse(dnsQuery(7, "allowed.example", 1), dst.Addr()))
			}
			c, tc2 := bumpClient(t, r, dst)
			io.WriteString(tc2, "GET /ws HTTP/1.1\r\nHost: allowed.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			br := bufio.NewReader(tc2)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("the upgrade: %v %v; want 101", resp, err)
			}
			const before = "before the reload"
			io.WriteString(tc2, before)
			if _, err := io.ReadFull(br, make([]byte, len(before))); err != nil {
				t.Fatalf("the tunnel carried nothing before the reload: %v", err)
			}
			checks := dc.Stats().Checks
			if tc.forget {
				dc.ForgetObserved() // before the store, as the appliance's reload does
			}
			r.reloadPolicy(t, tc.after)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var relayed int
			for i := range 3 {
				msg := fmt.Sprintf("exfil-%d", i)
				if _, err := io.WriteString(tc2, msg); err != nil {
					break
				}
				if _, err := io.ReadFull(br, make([]byte, len(msg))); err != nil {
					break
				}
				relayed++
			}
			c.Close()
			rec, tlsRec := r.record(t, c, "http"), r.record(t, c, "tls")
			if !rec.WebSocket {
				t.Fatalf("record %+v; want the tunnel's", rec)
			}
			if tc.ends {
				if relayed != 0 {
					t.Fatalf("%d messages relayed through the tunnel after the reload forgot the answer that vouched for its destination", relayed)
				}
				const why = "ended by a policy reload: its destination fails the destination check, which passed on a DNS answer the reload forgot"
				if rec.Action != "deny" || rec.Rule != "ok" || rec.Result != "denied" || rec.DestCheck != "mismatch" ||
					!strings.Contains(rec.Error, why) || !strings.Contains(rec.Error, "no address of allowed.example could be looked up") ||
					rec.Policy != r.p.cfg.Policy.Load().ID() || rec.BytesOut != int64(len(before)) {
					t.Fatalf("tunnel record %+v; want it ended by the reload for its destination check, only the bytes before it out", rec)
				}
				if tlsRec.Action != "deny" || tlsRec.Result != "denied" || !strings.Contains(tlsRec.Error, why) {
					t.Fatalf("tls record %+v; want it ended by the reload too", tlsRec)
				}
				return
			}
			if relayed != 3 {
				t.Fatalf("%d of 3 messages relayed after the reload; want the tunnel to go on", relayed)
			}
			if rec.Action == "deny" || rec.Result == "denied" || tlsRec.Result == "denied" {
				t.Fatalf("records %+v, %+v; want the tunnel not denied", rec, tlsRec)
			}
			if strings.HasSuffix(tc.name, "-audit") {
				// Audited: checked again, the failure recorded, not acted on.
				if rec.DestCheck != "mismatch" || !strings.Contains(rec.Error, "no address of allowed.example could be looked up") {
					t.Fatalf("record %+v; want the audit to record the failed check", rec)
				}
				return
			}
			if n := dc.Stats().Checks; rec.DestCheck != "ok" || n != checks {
				t.Fatalf("record %+v, %d checks after the reload; want the pass to hold, not checked again", rec, n-checks)
			}
		})
	}
}

// TestBumpedConnectionForgottenAnswerRefusesOtherHosts: the connection's
// own name is decided again after a reload too (connreload.go), its
// destination check included: a bumped connection whose SNI's check passed
// on an answer the reload forgot went on carrying requests for a Host that
// needs no check (an address, here) to the address that answer named. Now
// its check is made again, and fails: the request is refused, 403, its
// record saying why. A reload that forgets nothing leaves it be.
func TestBumpedConnectionForgottenAnswerRefusesOtherHosts(t *testing.T) {
	// 127.0.0.1 as a Host is let through by its address: no name to check.
	literal := "\n    - name: literal\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
	before := bumpAnyDNSPolicy + literal
	for _, tc := range []struct {
		name, after string
		forget      bool
	}{
		{"forgotten", bumpTrustedDNSPolicy + literal, true},
		{"kept", before, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := wsEchoTLSServer(t)
			dc := destcheck.New(destcheck.Config{})
			t.Cleanup(dc.Close)
			r := newClsRig(t, before, clsOptions{bump: true, check: dc.Check, config: wireChecker(dc)})
			ep := fmt.Sprintf("vpce-%017x", uint64(0x0123456789abcdef))
			dc.Observe(ep, aResponse(dnsQuery(7, "allowed.example", 1), dst.Addr()))
			c, tc2 := bumpClient(t, r, dst)
			br := bufio.NewReader(tc2)
			get := func(path string) int {
				io.WriteString(tc2, "GET "+path+" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				io.Copy(io.Discard, resp.Body)
				return resp.StatusCode
			}
			if code := get("/before"); code != http.StatusOK {
				t.Fatalf("before the reload: %d", code)
			}
			if tc.forget {
				dc.ForgetObserved()
			}
			r.reloadPolicy(t, tc.after)
			code := get("/after")
			c.Close()
			if !tc.forget {
				if code != http.StatusOK {
					t.Fatalf("after a reload that forgot nothing: %d, want 200", code)
				}
				return
			}
			if code != http.StatusForbidden {
				t.Fatalf("after the reload forgot the answer the connection's name passed on: %d, want 403", code)
			}
			var rec records.Record
			for end := time.Now().Add(5 * time.Second); rec.Path != "/after" && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				for _, x := range r.recs.parse(t) {
					if x.Kind == "http" && x.Path == "/after" {
						rec = x
					}
				}
			}
			if rec.Action != "deny" || rec.Rule != "ok" || rec.Result != "denied" ||
				!strings.Contains(rec.Error, `the connection's name (SNI "allowed.example") is no longer allowed, after a policy reload: `+
					"its destination fails the destination check, which passed on a DNS answer the reload forgot") {
				t.Fatalf("record %+v; want /after refused for the connection's name, its check failed", rec)
			}
		})
	}
}
