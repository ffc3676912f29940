package appliance

import (
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestNewWarnsWithoutRecordSink: an appliance started with no record sink
// (--access-log "" and no --cloudwatch-group) warns at start that no flow
// is recorded, and counts the records it makes as dropped; one with an
// access log does not warn.
func TestNewWarnsWithoutRecordSink(t *testing.T) {
	const warning = "no access record sink"
	for _, tc := range []struct {
		name      string
		accessLog string
		warn      bool
	}{
		{"none", "", true},
		{"a file", filepath.Join(t.TempDir(), "access.log"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs lockedBuffer
			old := slog.Default()
			slog.SetDefault(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
			defer slog.SetDefault(old)
			tn := newTestNet()
			o := DefaultOptions()
			o.GeneveAddr = netip.AddrPortFrom(tn.appliance, netstack.GenevePort).String()
			o.AdminAddr = netip.AddrPortFrom(tn.appliance, 0).String()
			o.StateDir, o.AccessLog, o.ReturnPath = t.TempDir(), tc.accessLog, netstack.ReturnPathBound
			o.GWLBCIDRs = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			a, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if got := strings.Contains(logs.String(), warning); got != tc.warn {
				t.Fatalf("warned %v, want %v; logs:\n%s", got, tc.warn, logs.String())
			}
			a.records.Write(&records.Record{Kind: "tcp"})
			if st := a.records.Stats(); tc.warn && st.Dropped != 1 {
				t.Fatalf("a record with no sink: %+v, want it counted as dropped", st)
			}
		})
	}
}
