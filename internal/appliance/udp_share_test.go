package appliance

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestUDPShareKeepsOthersDNS: a client that opens UDP flows as fast as it
// can stops at its share (--max-udp-flows-per-client), and another client
// behind the same endpoint still gets its DNS answered. Without the share,
// the first client would hold every ephemeral port of the host.
func TestUDPShareKeepsOthersDNS(t *testing.T) {
	const share = 20
	dns := serveUDP(t, netip.MustParseAddrPort("127.0.0.1:0"), func(q []byte) []byte {
		r := append([]byte(nil), q...)
		r[2], r[3] = 0x81, 0x83 // NXDOMAIN
		return r
	})
	r := newRig(t, func(o *Options) {
		o.IdleTimeout = time.Minute
		o.MaxUDPFlowsPerClient = share
		o.DNSPorts = []uint16{dns.Port()}
	}, nil)
	// A sink that only counts the first client's flows.
	pc := must(net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.net.server(3), 0))))(t)
	defer pc.Close()
	sink := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	var mu sync.Mutex
	seen := map[uint16]bool{}
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := pc.Read(buf)
			if err != nil {
				return
			}
			if n == 2 {
				mu.Lock()
				seen[binary.BigEndian.Uint16(buf)] = true
				mu.Unlock()
			}
		}
	}()
	greedy := netip.MustParseAddr("198.18.0.77")
	flood := func(port uint16) {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: greedy.AsSlice(), DstIP: sink.Addr().AsSlice()}
		udp := &layers.UDP{SrcPort: layers.UDPPort(port), DstPort: layers.UDPPort(sink.Port())}
		_ = udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			ip, udp, gopacket.Payload(binary.BigEndian.AppendUint16(nil, port))); err != nil {
			t.Fatal(err)
		}
		must(0, r.client.Send(buf.Bytes()))(t)
	}
	// Three times the share, twice over: datagrams the burst lost are sent
	// again, and flows that exist take them without becoming more.
	for range 2 {
		for port := uint16(30000); port < 30000+3*share; port++ {
			flood(port)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, "the greedy client at its share, with drops counted", func() string {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		st := r.stats()
		if n == share && st.Proxy.UDPActive == share && st.Proxy.UDPShareDrops > 0 {
			return ""
		}
		return fmt.Sprintf("%d flows at the sink, %d active, %d drops", n, st.Proxy.UDPActive, st.Proxy.UDPShareDrops)
	})

	// The other client's DNS.
	c := must(r.client.DialUDP(dns))(t)
	defer c.Close()
	q := []byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'w', 'w', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1}
	must(c.Write(q))(t)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	if n, err := c.Read(buf); err != nil || n != len(q) || buf[3] != 0x83 {
		t.Fatalf("the other client's DNS answer: %d bytes, %v", n, err)
	}
	recs := r.records(func(rs []records.Record) bool { return countKind(rs, "dns") == 1 })
	var shareRecords int
	for _, rec := range recs {
		switch {
		case rec.Kind == "dns" && (rec.ClientIP != clientV4.String() || rec.QueryName != "www.test" || rec.RCode != "NXDOMAIN"):
			t.Errorf("dns record %+v", rec)
		case rec.Kind == "udp" && strings.Contains(rec.Error, "max-udp-flows-per-client"):
			shareRecords++
			if rec.ClientIP != greedy.String() || rec.Action != "deny" {
				t.Errorf("share record %+v", rec)
			}
		}
	}
	if shareRecords != 1 {
		t.Errorf("%d records of the greedy client's drops, want 1 (they are rate-limited)\n%s", shareRecords, summarizeRecords(recs))
	}
}

// TestUDPOptionsValidate: the UDP options are checked, naming their flags.
func TestUDPOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.DNSPorts = nil }, "--dns-ports"},
		{func(o *Options) { o.DNSPorts = []uint16{53, 0} }, "--dns-ports"},
		{func(o *Options) { o.MaxUDPFlowsPerClient = 0 }, "--max-udp-flows-per-client"},
	} {
		o := DefaultOptions()
		tc.mutate(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
		}
	}
	o := DefaultOptions()
	if err := o.Validate(); err != nil || len(o.DNSPorts) != 1 || o.DNSPorts[0] != 53 || o.MaxUDPFlowsPerClient != 1024 {
		t.Fatalf("defaults: %v, ports %v, share %d", err, o.DNSPorts, o.MaxUDPFlowsPerClient)
	}
}
