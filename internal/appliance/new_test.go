package appliance

import (
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestNewErrorsCloseWhatWasOpened: a start-up that fails half-way returns
// the error (no panic) and leaves nothing open: the GENEVE port it had
// bound can be bound again.
func TestNewErrorsCloseWhatWasOpened(t *testing.T) {
	tn := newTestNet()
	taken, err := net.Listen("tcp", netip.AddrPortFrom(tn.appliance, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	geneve := netip.AddrPortFrom(tn.appliance, netstack.GenevePort).String()
	for _, tc := range []struct {
		name   string
		mutate func(*Options)
		want   string
	}{
		{"admin port taken", func(o *Options) { o.AdminAddr = taken.Addr().String() }, "admin listener"},
		{"access log in a missing directory", func(o *Options) {
			o.AccessLog = filepath.Join(t.TempDir(), "missing", "access.log")
		}, "--access-log"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			o.GeneveAddr, o.AdminAddr = geneve, netip.AddrPortFrom(tn.appliance, 0).String()
			o.StateDir, o.AccessLog, o.ReturnPath = t.TempDir(), "", netstack.ReturnPathBound
			o.GWLBCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			tc.mutate(&o)
			a, err := New(o)
			if err == nil {
				a.Close()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want one naming %s", err, tc.want)
			}
			c, err := net.ListenPacket("udp", geneve)
			if err != nil {
				t.Fatalf("the GENEVE port is still bound after the failed start: %v", err)
			}
			c.Close()
		})
	}
}
