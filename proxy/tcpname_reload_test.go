package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// bannerServer is a server-first destination: it greets each connection
// with a line, then echoes what it reads.
func bannerServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) {
		fmt.Fprintf(c, "220 banner\r\n")
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// A client that sends nothing to a destination only a name could open is
// decided, once nameWait has passed, under the policy in force then, not
// the one it connected under: a reload meanwhile that allows the address
// outright (a server-first protocol, say) lets it through, and one that
// denies it by a rule of its own names that rule and policy.
func TestNamedOnlySilentClientDecidedAfterReload(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 300 * time.Millisecond
	const (
		allowAddr = "policy:\n  default: deny\n  rules:\n    - name: loopback-tcp\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: allow\n"
		denyAddr  = "policy:\n  default: deny\n  rules:\n    - name: web\n      domains: [allowed.example]\n      action: splice\n    - name: newdeny\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n"
	)
	t.Run("allowed", func(t *testing.T) {
		r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
		dest := bannerServer(t)
		start := time.Now()
		c := r.dial(t, dest)
		time.Sleep(nameWait / 3) // decided at the SYN, waiting for a first byte
		r.reloadPolicy(t, allowAddr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "220 banner\r\n" {
			t.Fatalf("the silent client read %q, %v; want the server's banner once the reload allowed its address", line, err)
		}
		if waited := time.Since(start); waited < nameWait {
			t.Fatalf("the banner came %v after the dial, before nameWait %v: the connection was not held for a name", waited, nameWait)
		}
		c.Close()
		rec := r.record(t, c, "tcp")
		if rec.Action != "allow" || rec.Rule != "loopback-tcp" || rec.Policy != r.p.cfg.Policy.Load().ID() || rec.BytesIn == 0 {
			t.Errorf("record %+v, want tcp allowed by the reloaded policy's rule loopback-tcp, with the banner counted", rec)
		}
	})
	t.Run("denied", func(t *testing.T) {
		r := newClsRig(t, fmt.Sprintf(clsStrictAllowList, "splice"), clsOptions{})
		dest, accepts := countingListener(t)
		c := r.dial(t, dest)
		time.Sleep(nameWait / 3)
		r.reloadPolicy(t, denyAddr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
			t.Fatalf("silent client: read %v, want it reset", err)
		}
		rec := r.record(t, c, "tcp")
		if rec.Action != "deny" || rec.Rule != "newdeny" || rec.Policy != r.p.cfg.Policy.Load().ID() {
			t.Errorf("record %+v, want tcp denied by the reloaded policy's rule newdeny", rec)
		}
		if n := accepts.Load(); n != 0 {
			t.Errorf("the destination accepted %d connections, want none", n)
		}
	})
}
