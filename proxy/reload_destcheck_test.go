package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// spliceOK is a policy that splices allowed.example by name and denies the
// rest; mode and check fill its mode and destination_check.
func spliceOK(mode, check string) string {
	return "policy:\n  mode: " + mode + "\n  default: deny\n  destination_check: " + check +
		"\n  rules:\n    - name: ok\n      domains: [\"allowed.example\"]\n      action: splice\n"
}

// TestSplicedTLSDestCheckAfterReload: a spliced connection a reload still
// lets through by its name meets the new policy's destination check. An
// attacker used to open a spliced connection naming an allowed domain but
// going to an address of its own while the policy was in audit mode, or
// had the check off, and keep it open after the operator enforced the
// check. Now one whose check failed (recorded mismatch) ends once the
// policy enforces, one never checked is checked on its next bytes and ends
// if it fails, and one that passes goes on.
func TestSplicedTLSDestCheckAfterReload(t *testing.T) {
	fail := func(ctx context.Context, endpoint, name string, dest netip.Addr) error {
		return errors.New("allowed.example does not resolve to " + dest.String())
	}
	pass := func(ctx context.Context, endpoint, name string, dest netip.Addr) error { return nil }
	for _, tc := range []struct {
		name, before, after string
		check               func(context.Context, string, string, netip.Addr) error
		ends                bool
		destCheck           string
	}{
		{"audit-mismatch-to-enforce", spliceOK("audit", "dns"), spliceOK("enforce", "dns"), fail, true, "mismatch"},
		{"off-to-dns-failing", spliceOK("enforce", "off"), spliceOK("enforce", "dns"), fail, true, "mismatch"},
		{"off-to-dns-passing", spliceOK("enforce", "off"), spliceOK("enforce", "dns"), pass, false, "ok"},
		{"off-to-audit-dns-failing", spliceOK("enforce", "off"), spliceOK("audit", "dns"), fail, false, "mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newClsRig(t, tc.before, clsOptions{check: tc.check})
			c := r.dial(t, rawEchoServer(t))
			defer c.Close()
			hello := captureClientHello(t, &tls.Config{ServerName: "allowed.example"})
			if _, err := c.Write(hello); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
				t.Fatalf("not relayed before the reload: %v", err)
			}
			r.reloadPolicy(t, tc.after)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("exfil"))
			_, err := io.ReadFull(c, make([]byte, 5))
			if tc.ends && err == nil {
				t.Fatal("relayed after a reload whose destination check the connection fails")
			}
			if !tc.ends && err != nil {
				t.Fatalf("a connection the new policy still allows was cut: %v", err)
			}
			c.Close()
			rec := r.record(t, c, "tls")
			if rec.DestCheck != tc.destCheck {
				t.Errorf("dest_check %q, want %q", rec.DestCheck, tc.destCheck)
			}
			if !tc.ends {
				if rec.Action != "splice" || rec.Result == "denied" {
					t.Errorf("record %+v; want it spliced, not denied", rec)
				}
				return
			}
			if rec.Action != "deny" || rec.Rule != "ok" || rec.Result != "denied" ||
				!strings.Contains(rec.Error, "policy reload") || !strings.Contains(rec.Error, "destination check") ||
				rec.Policy != r.p.cfg.Policy.Load().ID() || rec.BytesOut != int64(len(hello)) {
				t.Errorf("record %+v; want it denied by the reload's policy %q for its destination check, only the ClientHello out",
					rec, r.p.cfg.Policy.Load().ID())
			}
		})
	}
}

// TestQUICDestCheckAfterReload: as for spliced TLS, a QUIC flow a reload
// still lets through by its name meets the new policy's destination check.
// The recheck runs on the packet path, where no lookup may wait: a flow
// whose check failed ends under an enforcing policy, and so does one never
// checked; one whose check passed goes on.
func TestQUICDestCheckAfterReload(t *testing.T) {
	webPolicy := func(mode, check string) string {
		return "policy:\n  mode: " + mode + "\n  default: deny\n  destination_check: " + check +
			"\n  rules:\n    - name: web\n      domains: [\"www.example.test\"]\n      action: allow\n"
	}
	fail := func(context.Context, string, string, netip.Addr) error { return errors.New("NXDOMAIN") }
	pass := func(context.Context, string, string, netip.Addr) error { return nil }
	flight := quicFirstFlight(t, "www.example.test")
	for _, tc := range []struct {
		name, before, after string
		check               func(context.Context, string, string, netip.Addr) error
		ends                bool
	}{
		{"audit-mismatch-to-enforce", webPolicy("audit", "dns"), webPolicy("enforce", "dns"), fail, true},
		{"off-to-dns", webPolicy("enforce", "off"), webPolicy("enforce", "dns"), pass, true},
		{"ok-stays-ok", webPolicy("enforce", "dns"), webPolicy("audit", "dns"), pass, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, h, recs := udpProxy(t, tc.before, func(c *Config) {
				c.DestinationCheck = tc.check
				c.UDPIdleTimeout = time.Minute
			})
			dst := newUDPSink(t, true)
			c, _ := startFlow(p, quicClient, dst.addr(), flight...)
			for range flight {
				<-c.out
			}
			after := mustPolicy(t, tc.after)
			h.Store(after)
			c.inject(flight[0])
			if !tc.ends {
				select {
				case <-c.out:
				case <-time.After(3 * time.Second):
					t.Fatal("a flow whose destination check passed was cut by the reload")
				}
				return
			}
			rec := oneRecord(t, recs)
			if rec.Kind != "quic" || rec.Action != "deny" || rec.Rule != "web" || rec.Result != "denied" ||
				!strings.Contains(rec.Error, "destination check") || rec.Policy != after.ID() {
				t.Fatalf("record %+v; want the QUIC flow ended by the reload's policy %q for its destination check", rec, after.ID())
			}
			time.Sleep(100 * time.Millisecond)
			if n := len(dst.received()); n != len(flight) {
				t.Fatalf("the destination received %d datagrams, want the %d of the first flight only", n, len(flight))
			}
		})
	}
}

// TestPreconnectedClassifiedUnderNewPolicy: a client that opens a
// connection and sends its first bytes only after a reload used to have
// them classified and decided under the policy it connected under: a
// ClientHello for a name the reload allows was refused, and one sent after
// a reload to enforce was destination-checked in audit mode. It is now
// decided under the policy in force when its first bytes come: the newly
// allowed name is spliced, the failed check refuses it, and a connection
// whose addresses alone the new policy denies is refused before
// classification, as a new one would be: at the reload itself, since it
// waits with its destination dialled (tcpwaitreload.go), so its ClientHello
// meets a reset connection.
func TestPreconnectedClassifiedUnderNewPolicy(t *testing.T) {
	fail := func(ctx context.Context, endpoint, name string, dest netip.Addr) error {
		return errors.New("allowed.example does not resolve to " + dest.String())
	}
	denyAllowed := "policy:\n  default: splice\n  destination_check: off\n  rules:\n    - name: no-allowed\n      domains: [\"allowed.example\"]\n      action: deny\n"
	for _, tc := range []struct {
		name, before, after, kind, rule, destCheck string
		relayed                                    bool
		wantErr                                    string // "": the record's error does not name a reload
	}{
		{"allowed-by-reload", denyAllowed, "policy:\n  default: splice\n  destination_check: off\n", "tls", "", "", true, ""},
		{"audit-to-enforce", spliceOK("audit", "dns"), spliceOK("enforce", "dns"), "tls", "ok", "mismatch", false, ""},
		{"denied-by-address", "policy: {default: allow}\n", noLoopbackTCP, "tcp", "no-loopback", "", false, errWaitingDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newClsRig(t, tc.before, clsOptions{check: fail})
			c := r.dial(t, rawEchoServer(t))
			defer c.Close()
			time.Sleep(100 * time.Millisecond) // accepted, waiting for the first bytes
			if tc.wantErr != "" {
				waitListed(t, r.p, 1) // dialled first, waiting under the old policy
			}
			r.reloadPolicy(t, tc.after)
			if tc.wantErr != "" {
				// The reload's look runs on a goroutine of its own: the
				// ClientHello is written once it has refused the
				// connection. Written first, it would be refused as first
				// bytes under the new policy ("denied by policy"), also
				// right, but not the order this case is about.
				waitListed(t, r.p, 0)
			}
			hello := captureClientHello(t, &tls.Config{ServerName: "allowed.example"})
			if _, err := c.Write(hello); err != nil && tc.wantErr == "" {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadFull(c, make([]byte, len(hello)))
			pol := r.p.cfg.Policy.Load().ID()
			if tc.relayed {
				if err != nil {
					t.Fatalf("a ClientHello the policy in force allows was refused (%v), as the policy the connection opened under would", err)
				}
				c.Close()
				if rec := r.record(t, c, tc.kind); rec.Action != "splice" || rec.Policy != pol {
					t.Fatalf("record %+v; want it spliced under the reload's policy %q", rec, pol)
				}
				return
			}
			if err == nil {
				t.Fatal("a ClientHello sent after the reload was relayed under the policy the connection opened under")
			}
			rec := r.record(t, c, tc.kind)
			if rec.Action != "deny" || rec.Result != "denied" || rec.Rule != tc.rule || rec.DestCheck != tc.destCheck ||
				rec.Policy != pol || rec.BytesOut != 0 || (tc.wantErr == "" && strings.Contains(rec.Error, "reload")) ||
				(tc.wantErr != "" && rec.Error != tc.wantErr) {
				t.Fatalf("record %+v; want it refused by rule %q of the reload's policy %q, dest_check %q, error %q",
					rec, tc.rule, pol, tc.destCheck, tc.wantErr)
			}
		})
	}
}

// TestQUICAuditReloadNotesUncheckedFlow: a QUIC flow never destination
// checked (the old policy had the check off) that a reload to an audit-mode
// policy with the check on lets go on, unchecked since no lookup may wait
// on the packet path, says so in its record's error, once, however many
// reloads pass: the audit that is meant to show mismatches used to stay
// silent about it.
func TestQUICAuditReloadNotesUncheckedFlow(t *testing.T) {
	webPolicy := func(mode, check string) string {
		return "policy:\n  mode: " + mode + "\n  default: deny\n  destination_check: " + check +
			"\n  rules:\n    - name: web\n      domains: [\"www.example.test\"]\n      action: allow\n"
	}
	fail := func(context.Context, string, string, netip.Addr) error { return errors.New("NXDOMAIN") }
	flight := quicFirstFlight(t, "www.example.test")
	p, h, recs := udpProxy(t, webPolicy("enforce", "off"), func(c *Config) {
		c.DestinationCheck = fail
		c.UDPIdleTimeout = time.Minute
	})
	dst := newUDPSink(t, true)
	c, _ := startFlow(p, quicClient, dst.addr(), flight...)
	for range flight {
		<-c.out
	}
	for range 2 { // two reloads: one note
		h.Store(mustPolicy(t, webPolicy("audit", "dns")))
		c.inject(flight[0])
		select {
		case <-c.out:
		case <-time.After(3 * time.Second):
			t.Fatal("an audit-mode reload cut the flow")
		}
	}
	c.Close()
	rec := oneRecord(t, recs)
	if rec.Kind != "quic" || rec.Action == "deny" || rec.Result != "ok" || rec.DestCheck != "" || strings.Count(rec.Error, destNotChecked) != 1 {
		t.Fatalf("record %+v; want the allowed QUIC flow noting once that its destination was not checked after the reload", rec)
	}
}
