package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// ownAddrsGoroutines counts the goroutines following the host's addresses.
func ownAddrsGoroutines() int {
	// A buffer that the dump fills may have cut it short: grow it.
	for size := 1 << 20; ; size *= 2 {
		buf := make([]byte, size)
		if n := runtime.Stack(buf, true); n < size {
			return strings.Count(string(buf[:n]), "proxy.(*ownAddrs)")
		}
	}
}

// TestOwnAddrsClose: the proxy refuses the host's addresses from the
// start; Close stops following them (twice is fine), and what was known
// stays refused.
func TestOwnAddrsClose(t *testing.T) {
	var own netip.Addr
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
			own = p.Addr()
			break
		}
	}
	before := ownAddrsGoroutines()
	p := New(Config{})
	if own.IsValid() && !strings.Contains(p.forbidden(own), "appliance itself") {
		t.Errorf("the host's address %s is not refused: %q", own, p.forbidden(own))
	}
	// The watchers are started with WaitGroup.Go: until they first run,
	// their stacks do not name them yet.
	for deadline := time.Now().Add(2 * time.Second); ownAddrsGoroutines() <= before; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("nothing follows the host's addresses")
		}
	}
	p.Close()
	p.Close()
	if n := ownAddrsGoroutines(); n != before {
		t.Errorf("%d goroutines still follow the host's addresses after Close (%d before New)", n, before)
	}
	if own.IsValid() && p.forbidden(own) == "" {
		t.Errorf("after Close the host's address %s is allowed", own)
	}
	if a := testing.AllocsPerRun(100, func() { p.forbidden(netip.MustParseAddr("198.18.2.3")) }); a != 0 {
		t.Errorf("forbidden allocates %v times", a)
	}
}

// ownAddrsHelperEnv runs TestOwnAddrsHelper as the helper process of
// TestOwnAddressesFollowed, inside that test's network namespace; its value
// is the mode: netlink, or poll (no netlink subscription, a short refresh
// interval).
const ownAddrsHelperEnv = "GWLBPROXY_OWNADDRS_HELPER"

// The addresses the test adds in its namespace after the proxy started.
var followedAddrs = []netip.Addr{netip.MustParseAddr("198.18.99.1"), netip.MustParseAddr("2001:db8:99::1")}

// TestOwnAddrsHelper is not a test: TestOwnAddressesFollowed runs it in a
// network namespace of its own. It starts a proxy, says "ready", then says
// "refused" once every address of followedAddrs is refused as the
// appliance's own, and "released" once none is any more.
func TestOwnAddrsHelper(t *testing.T) {
	mode := os.Getenv(ownAddrsHelperEnv)
	if mode == "" {
		t.Skip("the helper process of TestOwnAddressesFollowed")
	}
	p := New(Config{})
	if mode == "poll" {
		p.own.close()
		p.own = watchOwnAddrs(200*time.Millisecond, false)
	}
	defer p.Close()
	refused := func() int {
		n := 0
		for _, a := range followedAddrs {
			if strings.Contains(p.forbidden(a), "appliance itself") {
				n++
			}
		}
		return n
	}
	if n := refused(); n != 0 {
		fmt.Printf("error: %d addresses refused before they were added\n", n)
		return
	}
	fmt.Println("ready")
	deadline := time.Now().Add(30 * time.Second)
	for want, say := len(followedAddrs), "refused"; ; {
		if refused() == want {
			fmt.Println(say)
			if want == 0 {
				return
			}
			want, say = 0, "released"
		}
		if time.Now().After(deadline) {
			fmt.Printf("error: timed out waiting to say %s\n", say)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOwnAddressesFollowed: an address added to the host after the proxy
// started is refused as a destination within moments, and one removed is
// allowed again: through netlink, and, without it, through the periodic
// refresh. The proxy runs in a network namespace the test creates, whose
// addresses are the only ones it changes.
func TestOwnAddressesFollowed(t *testing.T) {
	testenv.RequireRoot(t, "following the host's addresses is tested in a network namespace: that needs root")
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("`ip netns list` fails (iproute2 needed): %v %s", err, bytes.TrimSpace(out)))
	}
	for _, mode := range []string{"netlink", "poll"} {
		t.Run(mode, func(t *testing.T) {
			ns := fmt.Sprintf("gwlbt-own-%08x", rand.Uint32())
			runIP(t, "netns", "add", ns)
			t.Cleanup(func() {
				if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
					t.Errorf("deleting namespace %s: %v %s", ns, err, out)
				}
			})
			runIP(t, "-n", ns, "link", "set", "lo", "up")

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestOwnAddrsHelper$", "-test.count", "1")
			cmd.Env = append(os.Environ(), ownAddrsHelperEnv+"="+mode)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := make(chan string, 16)
			go func() {
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			await := func(what string, within time.Duration) {
				t.Helper()
				timeout := time.After(within)
				for {
					select {
					case l, ok := <-lines:
						if !ok {
							t.Fatalf("the helper ended before saying %q; stderr:\n%s", what, stderr.String())
						}
						if l == what {
							return
						}
						if strings.HasPrefix(l, "error:") {
							t.Fatalf("helper: %s", l)
						}
					case <-timeout:
						t.Fatalf("the helper did not say %q within %s", what, within)
					}
				}
			}
			await("ready", 20*time.Second)
			// Bounded: netlink says at once; the polling helper refreshes
			// every 200 ms.
			const bound = 5 * time.Second
			added := time.Now()
			runIP(t, "-n", ns, "addr", "add", followedAddrs[0].String()+"/32", "dev", "lo")
			runIP(t, "-n", ns, "addr", "add", followedAddrs[1].String()+"/128", "dev", "lo", "nodad")
			await("refused", bound)
			t.Logf("%s: added addresses refused %s after the first was added", mode, time.Since(added).Round(time.Millisecond))
			removed := time.Now()
			runIP(t, "-n", ns, "addr", "del", followedAddrs[0].String()+"/32", "dev", "lo")
			runIP(t, "-n", ns, "addr", "del", followedAddrs[1].String()+"/128", "dev", "lo")
			await("released", bound)
			t.Logf("%s: removed addresses allowed again %s after the first was removed", mode, time.Since(removed).Round(time.Millisecond))
			if err := cmd.Wait(); err != nil {
				t.Fatalf("helper: %v; stderr:\n%s", err, stderr.String())
			}
		})
	}
}

func runIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}
