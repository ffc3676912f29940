package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// clsTCPOnly allows loopback for TCP that is neither TLS nor HTTP, and
// nothing else.
const clsTCPOnly = `
policy:
  default: deny
  rules:
    - name: raw-tcp-only
      dest_cidrs: ["127.0.0.0/8"]
      protocols: [tcp]
      action: allow
`

// clsListen returns a loopback listener whose connections (n at most) the
// proxy serves as flows to dest, for a real client such as openssl
// s_client.
func (r *clsRig) clsListen(t *testing.T, dest netip.AddrPort, n int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for range n {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			flow := netstack.FlowInfo{Endpoint: 0x0123456789abcdef, Attachment: 0x1111222233334444, FlowCookie: 0xabcd,
				Client: c.RemoteAddr().(*net.TCPAddr).AddrPort(), Dest: dest}
			go r.p.handleTCP(flow, &clsAcceptor{conn: c.(*net.TCPConn)})
		}
	}()
	return ln.Addr().String()
}

// clsOpenSSLServer starts `openssl s_server -www` on 127.0.0.1 and returns
// its address.
func clsOpenSSLServer(t *testing.T) netip.AddrPort {
	dir := t.TempDir()
	key, crt := filepath.Join(dir, "k.pem"), filepath.Join(dir, "c.pem")
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=raw.example").CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v %s", err, out)
	}
	return startLoopbackServer(t, "openssl s_server", func(port int) *exec.Cmd {
		return exec.Command("openssl", "s_server", "-accept", fmt.Sprint(port), "-cert", crt, "-key", key, "-www", "-quiet")
	})
}

// startLoopbackServer starts the process cmd makes for a free port of
// 127.0.0.1, stopped when t ends, and returns its address once it accepts
// connections (within 10 s).
func startLoopbackServer(t *testing.T, name string, cmd func(port int) *exec.Cmd) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	c := cmd(port)
	c.Stdout, c.Stderr = io.Discard, io.Discard
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	for range 200 {
		if conn, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
			conn.Close()
			return addr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not start", name)
	return addr
}

// A rule for protocols: [tcp] is for TCP that is neither TLS nor HTTP. TLS
// or HTTP whose first bytes cannot be read used to be relayed as tcp under
// it (the policy did not "depend on what a client sends"), while the same
// TLS or HTTP read cleanly was denied: a real openssl s_client with
// -servername bad..example completed its session with s_server. It is
// refused now, as under a rule with domains.
func TestTCPOnlyRuleRefusesUnreadable(t *testing.T) {
	r := newClsRig(t, clsTCPOnly, clsOptions{})
	if !r.p.cfg.Policy.Load().TCPNamesMatter() {
		t.Fatal("TCPNamesMatter() = false for a policy with a rule for protocols: [tcp]")
	}
	t.Run("http", func(t *testing.T) {
		for _, line := range []string{"GET  /x HTTP/1.1", "GET\t/x HTTP/1.1"} {
			c := r.dial(t, r.plainDest)
			fmt.Fprintf(c, "%s\r\nHost: web.example\r\nConnection: close\r\n\r\n", line)
			got, _ := io.ReadAll(c)
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
			if err != nil || resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%q: got %q, want the appliance's 400", line, got)
			}
			rec := r.record(t, c, "http")
			if rec.Action != "deny" || rec.Rule != "" || !strings.HasPrefix(rec.Error, "request head could not be read") {
				t.Errorf("%q: record %+v", line, rec)
			}
			c.Close()
		}
	})
	t.Run("tls bytes", func(t *testing.T) {
		for _, in := range []string{
			"\x16\x03\x07junk and more",
			"\x80\x1c\x01\x03\x03\x00\x03\x00\x00\x00\x10\x00\x00\x2f" + strings.Repeat("\xaa", 16), // SSLv2-format
		} {
			c := r.dial(t, r.plainDest)
			io.WriteString(c, in)
			got, _ := io.ReadAll(c)
			if len(got) < 7 || got[0] != 0x15 || got[6] != intercept.AlertHandshakeFailure {
				t.Errorf("%q: got %q, want a handshake_failure alert", in, got)
			}
			rec := r.record(t, c, "tls")
			if rec.Action != "deny" || !strings.HasPrefix(rec.Error, "ClientHello could not be read") {
				t.Errorf("%q: record %+v", in, rec)
			}
			c.Close()
		}
	})
	t.Run("openssl", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("no openssl")
		}
		srv := clsOpenSSLServer(t)
		addr := r.clsListen(t, srv, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "openssl", "s_client", "-connect", addr, "-servername", "bad..example", "-quiet", "-ign_eof")
		cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		_ = cmd.Run()
		if strings.Contains(out.String(), "s_server") {
			t.Errorf("openssl s_client -servername bad..example got s_server's page through a rule for tcp: %.300q", out.String())
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			var rec string
			for _, l := range strings.Split(r.recs.String(), "\n") {
				if strings.Contains(l, fmt.Sprintf(`"dest_port":%d`, srv.Port())) {
					rec = l
				}
			}
			if strings.Contains(rec, `"kind":"tls"`) && strings.Contains(rec, `"action":"deny"`) &&
				strings.Contains(rec, "ClientHello could not be read") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("record %s; want tls, deny, ClientHello could not be read", rec)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// Rules for UDP or ICMP alone leave a policy one of addresses and ports
// for TCP: unreadable HTTP is still relayed as tcp, as binary protocols
// whose first bytes look alike must be.
func TestUDPRuleStillRelaysUnreadable(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: allow\n  rules:\n    - {name: no-udp, protocols: [udp, icmp], dest_cidrs: [10.0.0.0/8], action: deny}\n", clsOptions{})
	if r.p.cfg.Policy.Load().TCPNamesMatter() {
		t.Fatal("TCPNamesMatter() = true for a policy whose only rule is for UDP and ICMP")
	}
	c := r.dial(t, r.plainDest)
	io.WriteString(c, "GET  / HTTP/1.1\r\nHost: denied.example\r\n\r\n")
	c.CloseWrite()
	if got, _ := io.ReadAll(c); !strings.Contains(string(got), "hello host=denied.example") {
		t.Errorf("got %q, want it relayed to the destination", got)
	}
	if rec := r.record(t, c, "tcp"); rec.Action != "allow" || rec.Error != "" {
		t.Errorf("record %+v", rec)
	}
	c.Close()
}

// A connection relayed as tcp because its head could not be read, under
// a policy of addresses alone, ends at its next bytes after a reload to a
// policy with a rule for tcp, which it is not.
func TestUnreadableRelayEndsOnReloadToTCPRule(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	c := r.dial(t, tcpPushServer(t))
	defer c.Close()
	br := bufio.NewReader(c)
	const head = "GET  / HTTP/1.1\n"
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	if got, err := br.ReadString('\n'); err != nil || got != head {
		t.Fatalf("echoed %q, %v; want the head relayed", got, err)
	}
	r.reloadPolicy(t, clsTCPOnly)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "more\n"); err == nil {
		if got, err := br.ReadString('\n'); err == nil {
			t.Fatalf("relayed %q after a reload to a policy with a rule for tcp", got)
		}
	}
	rec := r.record(t, c, "tcp")
	if rec.Action != "deny" || !strings.Contains(rec.Error, "could not be read") {
		t.Errorf("record %+v; want denied, its name unread", rec)
	}
}
