package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
)

// aResolver is a resolver on loopback that answers every query with one A
// record, addr, for the name asked (a 1 h TTL).
func aResolver(t *testing.T, addr netip.Addr) netip.AddrPort {
	t.Helper()
	return answeringServer(t, func(r []byte) []byte {
		r[2], r[3] = 0x81, 0x80
		r[6], r[7] = 0, 1 // ANCOUNT 1
		r = append(r, 0xc0, 12, 0, 1, 0, 1)
		r = binary.BigEndian.AppendUint32(r, 3600)
		a := addr.As4()
		return append(append(r, 0, 4), a[:]...)
	})
}

// TestDNSAnswerClientShare: the proxy hands DNSAnswer the client an answer
// was relayed to, so that a real destination check, wired as the appliance
// wires it, counts one client's names against that client's share: a
// client asking for ever new names evicts its own, and the name another
// client of the endpoint was told still vouches for its address.
func TestDNSAnswerClientShare(t *testing.T) {
	told := netip.MustParseAddr("192.0.2.10")
	res := aResolver(t, told)
	const share = 4
	dc := destcheck.New(destcheck.Config{MaxEntries: 100, MaxEntriesPerEndpoint: 100, MaxEntriesPerClient: share})
	t.Cleanup(dc.Close)
	p, _, _ := udpProxy(t, "policy: {default: allow}\n", func(c *Config) {
		c.UDPIdleTimeout = 3 * time.Second
		c.DNSPorts = []uint16{res.Port()}
		c.DestinationCheck = dc.Check
		c.DNSAnswer = dc.ObserveAt
		c.DNSGeneration = dc.Generation
	})
	const ep = "vpce-00000000000000007" // FlowInfo.Endpoint 7, as the records name it
	ask := func(client netip.AddrPort, names ...string) {
		t.Helper()
		qs := make([][]byte, len(names))
		for i, n := range names {
			qs[i] = dnsQuery(uint16(i+1), n, 1)
		}
		c, done := startFlow(p, client, res, qs...)
		for range names {
			select {
			case <-c.out:
			case <-time.After(5 * time.Second):
				t.Fatal("an answer was not relayed")
			}
		}
		<-done
	}
	ask(netip.MustParseAddrPort("198.18.0.5:40000"), "victim.example.test")
	var flood []string
	for i := range 4 * share {
		flood = append(flood, fmt.Sprintf("x%d.attacker.example.test", i))
	}
	ask(netip.MustParseAddrPort("198.18.0.6:40000"), flood...)

	if err := dc.Check(context.Background(), ep, "victim.example.test", told); err != nil {
		t.Errorf("another client's %d answers evicted the victim's: %v", len(flood), err)
	}
	kept := 0
	for _, n := range flood {
		if dc.Check(context.Background(), ep, n, told) == nil {
			kept++
		}
	}
	if st := dc.Stats(); kept != share || st.ObservedNames != share+1 {
		t.Errorf("the flooding client keeps %d names, %d in all (stats %+v); want its share, %d, and the victim's", kept, st.ObservedNames, st, share)
	}
}
