package proxy

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
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// reloadPolicy stores doc as the policy in force, as a reload does.
func (r *clsRig) reloadPolicy(t *testing.T, doc string) {
	t.Helper()
	pol, err := policy.Parse("reloaded.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	r.p.cfg.Policy.Store(pol)
}

// tcpPushServer serves raw TCP on loopback: each line it reads is echoed
// back, and a line "push" is answered 300 ms later, after the client has
// had time to see a reload happen.
func tcpPushServer(t *testing.T) netip.AddrPort {
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\x00push\n" {
				time.Sleep(300 * time.Millisecond)
			}
			if _, err := c.Write([]byte(line)); err != nil {
				return
			}
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

const noLoopbackTCP = "policy:\n  default: allow\n  rules:\n    - name: no-loopback\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n"

// TestTCPRelayRedecidedAfterReload: a relayed TCP connection opened before
// a reload that denies it used to go on under the old policy for as long
// as either end kept it busy. The next bytes it carries after the reload
// are decided again: not relayed, the client reset, and the record says
// the reload denied it, by the new rule. A reload that still allows it
// lets it go on.
func TestTCPRelayRedecidedAfterReload(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	c := r.dial(t, tcpPushServer(t))
	defer c.Close()
	br := bufio.NewReader(c)
	echo := func(msg string) error {
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got, err := br.ReadString('\n')
		if err == nil && got != msg {
			t.Fatalf("echoed %q, want %q", got, msg)
		}
		return err
	}
	if err := echo("\x00one\n"); err != nil {
		t.Fatal(err)
	}
	r.reloadPolicy(t, "policy:\n  default: deny\n  rules:\n    - name: loopback-tcp\n      protocols: [tcp]\n      action: allow\n")
	if err := echo("\x00two\n"); err != nil {
		t.Fatalf("a connection the new policy still allows was cut: %v", err)
	}
	r.reloadPolicy(t, noLoopbackTCP)
	if err := echo("\x00three\n"); err == nil {
		t.Fatal("a connection the reload denies was relayed on")
	}
	rec := r.record(t, c, "tcp")
	if rec.Policy != r.p.cfg.Policy.Load().ID() {
		t.Errorf("record names policy %q, want the reload's %q, which denied it", rec.Policy, r.p.cfg.Policy.Load().ID())
	}
	if rec.Action != "deny" || rec.Rule != "no-loopback" || rec.Result != "denied" ||
		!strings.Contains(rec.Error, "policy reload") || rec.BytesOut != int64(len("\x00one\n\x00two\n")) {
		t.Fatalf("record %+v; want the connection ended as denied by no-loopback after a reload, 10 bytes out", rec)
	}
}

// TestTCPRelayServerPushRedecidedAfterReload: a client that sends nothing
// after a reload cannot keep its connection under the old policy either:
// the destination's next bytes are decided on before they are relayed.
func TestTCPRelayServerPushRedecidedAfterReload(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	c := r.dial(t, tcpPushServer(t))
	defer c.Close()
	if _, err := c.Write([]byte("\x00push\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // relayed, and the server waiting to answer
	r.reloadPolicy(t, noLoopbackTCP)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if got, err := io.ReadAll(c); len(got) != 0 || err == nil {
		t.Fatalf("the client read %q (%v) after a reload that denies its connection; want nothing and a reset", got, err)
	}
	rec := r.record(t, c, "tcp")
	if rec.Action != "deny" || rec.Rule != "no-loopback" || rec.Result != "denied" || rec.BytesIn != 0 {
		t.Fatalf("record %+v; want the connection denied by the reload, nothing relayed back", rec)
	}
}

// TestSplicedTLSRedecidedAfterReload: a spliced TLS connection is decided
// again on its ClientHello's name when it next carries bytes after a
// reload: one whose name the new policy denies, or now bumps (a spliced
// connection cannot be bumped midway, and going on would keep from
// inspection what the operator wants inspected), ends.
func TestSplicedTLSRedecidedAfterReload(t *testing.T) {
	for _, tc := range []struct{ name, reload, rule, why string }{
		{"denied", "policy:\n  default: splice\n  rules:\n    - name: no-allowed\n      domains: [\"allowed.example\"]\n      action: deny\n", "no-allowed", "denied by policy"},
		{"bumped", "policy:\n  default: splice\n  rules:\n    - name: inspect\n      domains: [\"allowed.example\"]\n      action: bump\n", "inspect", "cannot be bumped midway"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newClsRig(t, "policy: {default: splice}\n", clsOptions{bump: true})
			c := r.dial(t, r.tlsDest)
			defer c.Close()
			tlc := tls.Client(c, &tls.Config{ServerName: "allowed.example", RootCAs: r.upRoots, NextProtos: []string{"http/1.1"}})
			br := bufio.NewReader(tlc)
			get := func(path string) error {
				fmt.Fprintf(tlc, "GET %s HTTP/1.1\r\nHost: allowed.example\r\n\r\n", path)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					return err
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return err
			}
			if err := get("/before"); err != nil {
				t.Fatal(err)
			}
			r.reloadPolicy(t, tc.reload)
			if err := get("/after"); err == nil {
				t.Fatal("a spliced connection the reload ends was relayed on")
			}
			rec := r.record(t, c, "tls")
			if rec.Action != "deny" || rec.Rule != tc.rule || rec.Result != "denied" ||
				!strings.Contains(rec.Error, "policy reload") || !strings.Contains(rec.Error, tc.why) {
				t.Fatalf("record %+v; want the spliced connection ended by the reload (%s)", rec, tc.why)
			}
		})
	}
}

// TestUnreadableNameRedecidedAfterReload: a connection that looks like TLS
// but whose ClientHello cannot be read is relayed as TCP while no rule
// needs a name; once a reload brings such a rule in, it is refused like a
// new one would be, rather than carrying on as opaque bytes that pass
// every rule needing the name.
func TestUnreadableNameRedecidedAfterReload(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	c := r.dial(t, tcpPushServer(t))
	defer c.Close()
	br := bufio.NewReader(c)
	first := "\x16\x03\x07junk and more\n" // a TLS record too long to be a ClientHello
	if _, err := c.Write([]byte(first)); err != nil {
		t.Fatal(err)
	}
	if got, err := br.ReadString('\n'); err != nil || got != first {
		t.Fatalf("echoed %q (%v): the unreadable connection was not relayed", got, err)
	}
	r.reloadPolicy(t, "policy:\n  default: allow\n  rules:\n    - name: no-denied\n      domains: [\"denied.example\"]\n      action: deny\n")
	c.Write([]byte("\x00more\n"))
	if got, err := br.ReadString('\n'); err == nil {
		t.Fatalf("echoed %q after a reload that makes names matter", got)
	}
	rec := r.record(t, c, "tcp")
	if rec.Action != "deny" || rec.Result != "denied" || !strings.Contains(rec.Error, "name could not be read") {
		t.Fatalf("record %+v; want the connection ended by the reload, its name unread", rec)
	}
}

// TestSplicedECHRedecidedAfterReload: a spliced connection whose
// ClientHello offered ECH ends once a reload says ech: deny: its name is
// only the cover name of a client-facing server, and the new policy wants
// no such connection to go anywhere.
func TestSplicedECHRedecidedAfterReload(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	c := r.dial(t, rawEchoServer(t))
	defer c.Close()
	hello := captureClientHello(t, &tls.Config{ServerName: "secret.example", MinVersion: tls.VersionTLS13,
		EncryptedClientHelloConfigList: clsECHConfigList(t, "public.example")})
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
		t.Fatalf("the spliced ClientHello was not relayed: %v", err)
	}
	r.reloadPolicy(t, "policy: {default: allow, ech: deny}\n")
	c.Write([]byte("more"))
	if n, err := c.Read(make([]byte, 16)); err == nil {
		t.Fatalf("read %d bytes after a reload that denies ECH", n)
	}
	rec := r.record(t, c, "tls")
	if rec.Action != "deny" || !rec.ECH || rec.Result != "denied" || !strings.Contains(rec.Error, "ech: deny") {
		t.Fatalf("record %+v; want the ECH connection ended by the reload", rec)
	}
}

// rawEchoServer echoes every byte it reads, on loopback.
func rawEchoServer(t *testing.T) netip.AddrPort {
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) { _, _ = io.Copy(c, c) })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// captureClientHello returns the first flight crypto/tls sends under cfg.
func captureClientHello(t *testing.T, cfg *tls.Config) []byte {
	a, b := net.Pipe()
	defer a.Close()
	go func() { _ = tls.Client(a, cfg).Handshake() }()
	buf := make([]byte, 1<<14)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := b.Read(buf)
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}
