package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestDNSRecordsCarryOnlyTheirQueryError: a DNS-port flow whose first
// datagram reads as a QUIC Initial that does not open is relayed as udp
// (nothing in the policy looks at names), its udp record saying so. The
// dns records of the queries it carries say nothing of it: an answered
// query's record has no error, as records.md's error is "what went wrong"
// with that query. They once copied the flow's note into each.
func TestDNSRecordsCarryOnlyTheirQueryError(t *testing.T) {
	dst := newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.UDPIdleTimeout = time.Minute
		cfg.DNSPorts = []uint16{dst.addr().Port()}
	})
	// A v1 long header, Initial, DCID of 8 bytes, no SCID, no token, then
	// 1,200 bytes that no Initial key opens.
	initial := []byte{0xc0, 0, 0, 0, 1, 8, 9, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0x44, 0xb0}
	initial = append(initial, make([]byte, 1200)...)
	c := newFakeUDPClient(quicClient, dst.addr())
	c.inject(initial)
	done := make(chan struct{})
	go func() {
		p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: quicClient, Dest: dst.addr()}, c)
		close(done)
	}()
	waitUntil(t, 5*time.Second, func() bool { return len(dst.received()) == 1 }, "the Initial to be relayed as udp")
	q := dnsQuery(21, "plain.example.test", 1)
	c.inject(q)
	waitUntil(t, 5*time.Second, func() bool { return len(dst.received()) == 2 }, "the query to be relayed")
	dst.mu.Lock()
	from := dst.from[1]
	dst.mu.Unlock()
	if _, err := dst.pc.WriteToUDPAddrPort(dnsResponse(q), from); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.out:
	case <-time.After(5 * time.Second):
		t.Fatal("the answer did not reach the client")
	}
	c.Close()
	<-done

	var udp *records.Record
	var answered bool
	for _, r := range recs.records(t, 2) {
		switch r.Kind {
		case "udp":
			udp = &r
		case "dns":
			// The Initial read as a query too, left waiting: its error
			// says what ended it (the client's side closing), its own.
			if strings.Contains(r.Error, "QUIC") || r.DestCheck != "" {
				t.Errorf("dns record of %q (%s): error %q, dest_check %q, want neither: the flow's note is not the query's", r.QueryName, r.Result, r.Error, r.DestCheck)
			}
			if r.QueryName == "plain.example.test" {
				answered = r.Result == "ok" && r.RCode == "NXDOMAIN" && r.Error == ""
			}
		}
	}
	if udp == nil || !strings.Contains(udp.Error, "QUIC ClientHello could not be read") || !strings.Contains(udp.Error, "relayed as udp") {
		t.Errorf("the flow's udp record %+v, want its note that the Initial was unread and relayed as udp", udp)
	}
	if !answered {
		t.Error("no dns record of the answered query, ok and NXDOMAIN with no error")
	}
}

// TestDNSRecordsOmitFlowDestCheck: a dest_check on the flow's record (a
// check of a name the flow was decided on) is the flow's, not a query's.
func TestDNSRecordsOmitFlowDestCheck(t *testing.T) {
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
	rec := &records.Record{Kind: "udp", Endpoint: "vpce-7", ClientIP: "10.0.0.5", DestCheck: "mismatch", Error: "the flow's own note"}
	d := newDNSLog(p, rec, nil)
	q := dnsQuery(22, "z.example.test", 1)
	d.query(q)
	d.answer(dnsResponse(q))
	d.close(dnsTimedOut)
	for _, r := range recs.records(t, 1) {
		if r.Kind == "dns" && (r.Error != "" || r.DestCheck != "") {
			t.Errorf("dns record: error %q, dest_check %q, want neither", r.Error, r.DestCheck)
		}
	}
	if rec.Error != "the flow's own note" || rec.DestCheck != "mismatch" {
		t.Errorf("the flow's own record changed: error %q, dest_check %q", rec.Error, rec.DestCheck)
	}
}
