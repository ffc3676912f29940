package appliance

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestIPv6ClientPrefix: two hosts whose IPv6 addresses share a /80 (one
// picked its address in the other's, as AssignIpv6Addresses lets it). The
// greedy one fills its UDP share. By default (--ipv6-client-prefix 80) the
// other, holding nothing, is refused, and its record says the /80 holds the
// share, not the client; with --ipv6-client-prefix 128 it is served.
func TestIPv6ClientPrefix(t *testing.T) {
	t.Cleanup(func() { clientkey.SetIPv6Bits(clientkey.DefaultIPv6Bits) })
	for _, c := range []struct {
		bits   int
		served bool
	}{{80, false}, {128, true}} {
		t.Run(fmt.Sprintf("prefix%d", c.bits), func(t *testing.T) {
			if got := neighbourInSlash80(t, c.bits); got != c.served {
				t.Errorf("--ipv6-client-prefix %d: victim served %v, want %v", c.bits, got, c.served)
			}
		})
	}
}

// neighbourInSlash80 runs the neighbours through an appliance counting IPv6
// clients by bits, and reports whether the victim's datagram got through.
func neighbourInSlash80(t *testing.T, bits int) bool {
	const share = 8
	r := newRig(t, func(o *Options) {
		o.IdleTimeout = time.Minute
		o.MaxUDPFlowsPerClient = share
		o.IPv6ClientPrefix = bits
	}, nil)
	pc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer pc.Close()
	sink := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	got := make(chan string, 2*share)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := pc.Read(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	send := func(src netip.Addr, port uint16, payload string) {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: sink.Addr().AsSlice()}
		udp := &layers.UDP{SrcPort: layers.UDPPort(port), DstPort: layers.UDPPort(sink.Port())}
		_ = udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			ip, udp, gopacket.Payload(payload)); err != nil {
			t.Fatal(err)
		}
		must(0, r.client.Send(buf.Bytes()))(t)
	}
	greedy := netip.MustParseAddr("2001:db8::aaaa:1:1")
	victim := netip.MustParseAddr("2001:db8::aaaa:2:2") // another host, same /80
	for port := uint16(30000); port < 30000+share; port++ {
		send(greedy, port, "g")
	}
	for range share {
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("/%d: the greedy host's flows did not arrive", bits)
		}
	}
	send(victim, 40000, "victim")
	select {
	case s := <-got:
		if s != "victim" {
			t.Fatalf("/%d: sink got %q", bits, s)
		}
		return true
	case <-time.After(2 * time.Second):
	}
	recs := r.records(func(rs []records.Record) bool {
		for _, x := range rs {
			if x.ClientIP == victim.String() {
				return true
			}
		}
		return false
	})
	for _, x := range recs {
		if x.ClientIP == victim.String() {
			const want = "the client's /80 holds 8 UDP flows, its share (--max-udp-flows-per-client)"
			if x.Action != "deny" || x.Error != want {
				t.Errorf("/%d: victim's record: action=%s error=%q, want deny, %q", bits, x.Action, x.Error, want)
			}
		}
	}
	return false
}

// TestIPv6ClientPrefixValidate: a prefix outside 48..128 is refused, naming
// the flag.
func TestIPv6ClientPrefixValidate(t *testing.T) {
	for _, bits := range []int{0, 47, 129} {
		o := DefaultOptions()
		o.IPv6ClientPrefix = bits
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--ipv6-client-prefix") {
			t.Errorf("--ipv6-client-prefix %d: %v", bits, err)
		}
	}
}
