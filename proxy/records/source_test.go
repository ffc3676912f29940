package records

import (
	"context"
	"io"
	"net/netip"
	"testing"
)

// TestSourceOf: a record's source is its client as the per-client buckets
// count it: the address behind its endpoint, an IPv6 client by its /80, an
// IPv4-mapped address as IPv4; records without a client share the zero
// Source. Working it out costs no allocation.
func TestSourceOf(t *testing.T) {
	const vpce = "vpce-0123456789abcdef"
	for _, tc := range []struct {
		endpoint, client string
		want             Source
	}{
		{vpce, "10.0.0.5", Source{0x0123456789abcdef, netip.MustParseAddr("10.0.0.5")}},
		{vpce, "::ffff:10.0.0.5", Source{0x0123456789abcdef, netip.MustParseAddr("10.0.0.5")}},
		{"vpce-2", "10.0.0.5", Source{2, netip.MustParseAddr("10.0.0.5")}},
		{vpce, "2001:db8:1:2:3:4:5:6", Source{0x0123456789abcdef, netip.MustParseAddr("2001:db8:1:2:3::")}},
		{vpce, "2001:db8:1:2:3:ffff:ffff:ffff", Source{0x0123456789abcdef, netip.MustParseAddr("2001:db8:1:2:3::")}},
		{"", "10.0.0.5", Source{0, netip.MustParseAddr("10.0.0.5")}},
		{vpce, "", Source{}},
		{"", "", Source{}},
	} {
		r := &Record{Endpoint: tc.endpoint, ClientIP: tc.client}
		if got := SourceOf(r); got != tc.want {
			t.Errorf("SourceOf(%q, %q) = %v, want %v", tc.endpoint, tc.client, got, tc.want)
		}
	}
	r := &Record{Endpoint: vpce, ClientIP: "2001:db8:1:2:3:4:5:6"}
	if n := testing.AllocsPerRun(100, func() { SourceOf(r) }); n != 0 {
		t.Errorf("SourceOf allocates %.0f times", n)
	}
}

// TestWriterShipsSource: the Writer hands the Shipper each line with its
// record's source, with files or without.
func TestWriterShipsSource(t *testing.T) {
	for _, files := range [][]io.Writer{nil, {io.Discard}} {
		ship := &shipSink{}
		w := NewWriter(ship, files...)
		defer w.Close(context.Background())
		w.Write(&Record{Endpoint: "vpce-0a", ClientIP: "10.0.0.5"})
		w.Write(&Record{Kind: "tls"}) // the appliance's own
		w.Write(&Record{Endpoint: "vpce-0a", ClientIP: "fd00::1:2:3"})
		ship.mu.Lock()
		got := ship.srcs
		ship.mu.Unlock()
		want := []Source{{10, netip.MustParseAddr("10.0.0.5")}, {}, {10, netip.MustParseAddr("fd00::")}}
		if len(got) != len(want) {
			t.Fatalf("shipped %d sources, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("line %d shipped with source %v, want %v", i, got[i], want[i])
			}
		}
	}
}
