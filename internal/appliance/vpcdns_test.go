package appliance

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// fakeSysfs returns a sysfs root whose files are files (path relative to
// the root: contents).
func fakeSysfs(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// nitroSysfs is what a Nitro instance's sysfs says of its hardware.
var nitroSysfs = map[string]string{"devices/virtual/dmi/id/sys_vendor": "Amazon EC2\n"}

// vpcResolverNet is a loopback "VPC block" of this test process, outside
// every testNet (127.netOctet.n.x): its base + 2 stands for the Amazon
// DNS server, and a listener there shows whether anything reached it.
func vpcResolverNet() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 252, netOctet, 0}), 24)
}

// countingResolver listens on UDP and TCP port 53 of a and counts what
// reaches it: a datagram, a connection.
func countingResolver(t *testing.T, a netip.Addr) (udp, tcp *atomic.Int64) {
	t.Helper()
	udp, tcp = new(atomic.Int64), new(atomic.Int64)
	pc := must(net.ListenPacket("udp", netip.AddrPortFrom(a, 53).String()))(t)
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			udp.Add(1)
		}
	}()
	ln := must(net.Listen("tcp", netip.AddrPortFrom(a, 53).String()))(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tcp.Add(1)
			c.Close()
		}
	}()
	return udp, tcp
}

// TestVPCResolverRefused: the Amazon DNS server of the appliance's VPC
// (base + 2 of its CIDR blocks, from instance metadata) is refused to
// clients, UDP and TCP, with a deny record and no dial: with --gwlb-cidrs
// given (on EC2 the blocks are read for this alone) and without it (the
// blocks the senders default to). Nothing reaches a listener there.
func TestVPCResolverRefused(t *testing.T) {
	block := vpcResolverNet()
	resolver := netip.AddrPortFrom(block.Addr().Next().Next(), 53)
	for _, tc := range []struct {
		name   string
		v4     string
		mutate func(o *Options)
	}{
		{"gwlb-cidrs given", block.String(), func(o *Options) { o.sysfs = fakeSysfs(t, nitroSysfs) }},
		// The VPC's blocks are the senders too: the simulator is in the first.
		{"VPC default", "127.0.0.0/8\n" + block.String(), func(o *Options) { o.GWLBCIDRs = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			udpIn, tcpIn := countingResolver(t, resolver.Addr())
			imds := newFakeIMDS(t, tc.v4, "")
			r := newRig(t, func(o *Options) { o.MetadataEndpoint = imds.URL; tc.mutate(o) }, nil)
			if imds.tokens.Load() == 0 {
				t.Fatal("instance metadata was not asked")
			}

			u := must(r.client.DialUDP(resolver))(t)
			defer u.Close()
			must(u.Write([]byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x08internal\x07example\x00\x00\x01\x00\x01")))(t)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if c, err := r.client.DialTCP(ctx, resolver); err == nil {
				c.Close()
				t.Error("TCP to the VPC's resolver was accepted")
			}
			recs := r.records(func(recs []records.Record) bool {
				u, c := findRecord(recs, "udp", resolver), findRecord(recs, "tcp", resolver)
				return u != nil && u.Action == "deny" && c != nil && c.Action == "deny"
			})
			for _, kind := range []string{"udp", "tcp"} {
				rec := findRecord(recs, kind, resolver)
				if rec.Result != "denied" || !strings.Contains(rec.Error, "Amazon DNS server of the appliance's VPC") || rec.Rule != "" {
					t.Errorf("%s record: result %q, rule %q, error %q; want denied by no rule, naming the VPC's DNS server", kind, rec.Result, rec.Rule, rec.Error)
				}
			}
			// A refused flow's record is written where it is refused,
			// on a path that dials nothing; were the flows relayed, the
			// datagram and the connection would have reached the
			// listener before their records were written.
			if st := r.stats().Proxy; st.TCPDialErrors != 0 || st.UDPActive != 0 || st.TCPActive != 0 {
				t.Errorf("proxy stats %+v: a dial was tried", st)
			}
			if udpIn.Load() != 0 || tcpIn.Load() != 0 {
				t.Errorf("the resolver got %d datagrams and %d connections", udpIn.Load(), tcpIn.Load())
			}
		})
	}
}

// captureLogs runs f with slog's default logger writing to a buffer, and
// returns what was logged.
func captureLogs(f func()) string {
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&lockedWriter{w: &logs}, nil)))
	defer slog.SetDefault(old)
	f()
	return logs.String()
}

// TestVPCResolverUnreadable: with --gwlb-cidrs given, on EC2, instance
// metadata that does not answer costs neither the start nor more than its
// timeout (an unreadable VPC never failed a start with the flag); a
// warning says the VPC's resolver is not refused and what
// policy rule refuses it instead.
func TestVPCResolverUnreadable(t *testing.T) {
	refused := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	url := "http://" + refused.Addr().String()
	refused.Close()
	o := DefaultOptions()
	o.GWLBCIDRs, o.MetadataEndpoint, o.sysfs = prefixes("127.0.0.0/8"), url, fakeSysfs(t, nitroSysfs)
	began := time.Now()
	logged := captureLogs(func() { resolveVPCResolver(&o) })
	if d := time.Since(began); d > metadataTimeout+time.Second {
		t.Errorf("took %s", d)
	}
	if o.vpcCIDRs != nil {
		t.Errorf("VPC blocks %v from unreadable metadata", o.vpcCIDRs)
	}
	for _, want := range []string{"level=WARN", "not refused", "dest_cidrs", "action: deny"} {
		if !strings.Contains(logged, want) {
			t.Errorf("logs lack %q:\n%s", want, logged)
		}
	}
}

// TestVPCResolverOffEC2: off EC2 (sysfs names no Amazon hardware) the
// appliance with --gwlb-cidrs asks instance metadata nothing, so the
// embedded default gains no delay, failure or warning, unless
// AWS_EC2_METADATA_SERVICE_ENDPOINT names an endpoint.
func TestVPCResolverOffEC2(t *testing.T) {
	imds := newFakeIMDS(t, "10.0.0.0/16", "")
	o := DefaultOptions()
	o.GWLBCIDRs, o.MetadataEndpoint = prefixes("127.0.0.0/8"), imds.URL
	o.sysfs = fakeSysfs(t, map[string]string{"devices/virtual/dmi/id/sys_vendor": "QEMU\n"})
	logged := captureLogs(func() { resolveVPCResolver(&o) })
	if n := imds.tokens.Load() + imds.tokenless.Load(); n != 0 || o.vpcCIDRs != nil {
		t.Errorf("off EC2: %d requests to instance metadata, VPC blocks %v", n, o.vpcCIDRs)
	}
	if strings.Contains(logged, "level=WARN") {
		t.Errorf("a warning off EC2:\n%s", logged)
	}

	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.URL)
	o.MetadataEndpoint = ""
	if resolveVPCResolver(&o); len(o.vpcCIDRs) != 1 || o.vpcCIDRs[0] != netip.MustParsePrefix("10.0.0.0/16") {
		t.Errorf("with AWS_EC2_METADATA_SERVICE_ENDPOINT set: VPC blocks %v", o.vpcCIDRs)
	}
}

// TestOnEC2: EC2's hardware is told from sysfs alone, without a request:
// Nitro's DMI vendor, a Xen instance's hypervisor UUID or BIOS version.
func TestOnEC2(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  bool
	}{
		{"Nitro", nitroSysfs, true},
		{"Nitro board", map[string]string{"devices/virtual/dmi/id/board_vendor": "Amazon EC2\n"}, true},
		{"Xen uuid", map[string]string{"hypervisor/uuid": "ec2e1916-9099-7caf-fd21-012345abcdef\n"}, true},
		{"Xen uuid upper", map[string]string{"hypervisor/uuid": "EC2E1916-9099-7CAF-FD21-012345ABCDEF\n"}, true},
		{"Xen BIOS", map[string]string{"devices/virtual/dmi/id/bios_version": "4.11.amazon\n"}, true},
		{"QEMU", map[string]string{"devices/virtual/dmi/id/sys_vendor": "QEMU\n", "hypervisor/uuid": "0123\n"}, false},
		{"nothing", nil, false},
	} {
		if got := onEC2(fakeSysfs(t, tc.files)); got != tc.want {
			t.Errorf("%s: onEC2 = %v", tc.name, got)
		}
	}
	if onEC2(filepath.Join(t.TempDir(), "absent")) {
		t.Error("onEC2 without a sysfs")
	}
}
