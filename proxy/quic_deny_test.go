package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestQUICNamedDenialNotHidden plays a client that floods one-packet
// denials (UDP to the metadata address, a new source port each time, at
// ten times the bucket's refill) to keep its early-denial bucket empty,
// then opens a QUIC flow to a name the policy denies. That denial used to
// draw on the same bucket and went unrecorded, so the name never reached
// the records; it now has a bucket of its own.
func TestQUICNamedDenialNotHidden(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	imds := netip.MustParseAddrPort("169.254.169.254:53")
	for i := range denyRecordBurst + 50 {
		startFlow(p, netip.AddrPortFrom(quicClient.Addr(), uint16(30000+i)), imds, []byte("x"))
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			// Ten a tick: many times the bucket's refill of 20 a
			// second even when the machine is busy and ticks come late.
			for j := range 10 {
				startFlow(p, netip.AddrPortFrom(quicClient.Addr(), uint16(20000+(10*i+j)%40000)), imds, []byte("x"))
			}
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); p.Stats().DeniedUnrecorded == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	unrecordedBefore := p.Stats().DeniedUnrecorded
	startFlow(p, quicClient, dst.addr(), quicFirstFlight(t, "blocked.example.test")...)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-stopped
	if unrecordedBefore == 0 {
		t.Fatal("the flood did not empty the client's early-denial bucket")
	}
	var named int
	for _, r := range recs.records(t, denyRecordBurst+1) {
		if r.Kind == "quic" && r.SNI == "blocked.example.test" && r.Action == "deny" && r.Rule == "no-blocked" {
			named++
		}
	}
	if named != 1 {
		t.Fatalf("%d records name the denied QUIC flow, want 1 (denied_unrecorded %d)", named, p.Stats().DeniedUnrecorded)
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams of a denied QUIC flow", n)
	}
}

// TestQUICNamedDenialsBounded: QUIC denials on a name cost a client one
// datagram each, so their records are bounded too: a client flooding them
// gets its bucket's worth recorded, the rest counted, and its next record
// says how many went unrecorded.
func TestQUICNamedDenialsBounded(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "blocked.example.test")
	const n = 2 * namedDenyRecordBurst
	start := time.Now()
	for i := range n {
		startFlow(p, netip.AddrPortFrom(quicClient.Addr(), uint16(30000+i)), dst.addr(), flight...)
	}
	deadline := time.Now().Add(5 * time.Second)
	count := func() (recorded, told int) {
		for _, r := range recs.parse(t) {
			if r.Kind != "quic" || r.SNI != "blocked.example.test" {
				continue
			}
			recorded++
			if i := strings.Index(r.Error, "; "); i >= 0 {
				var k int
				if _, err := fmt.Sscanf(r.Error[i+2:], "%d more QUIC flows refused on their names from this client before this one", &k); err == nil {
					told += k
				}
			}
		}
		return
	}
	for {
		recorded, _ := count()
		if recorded+int(p.Stats().DeniedUnrecorded) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	recorded, _ := count()
	unrecorded := int(p.Stats().DeniedUnrecorded)
	most := namedDenyRecordBurst + int(time.Since(start).Seconds()*namedDenyRecordRate) + 1
	if recorded+unrecorded != n || recorded < namedDenyRecordBurst || recorded > most {
		t.Fatalf("%d recorded, %d counted unrecorded: want all %d, and %d to %d recorded", recorded, unrecorded, n, namedDenyRecordBurst, most)
	}
	time.Sleep(100 * time.Millisecond) // the bucket refills a little
	startFlow(p, netip.AddrPortFrom(quicClient.Addr(), 31000), dst.addr(), flight...)
	var told int
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if recorded2, t2 := count(); recorded2 > recorded {
			told = t2
			break
		}
	}
	if told != unrecorded {
		t.Fatalf("the client's records tell of %d denials unrecorded, want %d", told, unrecorded)
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams of denied QUIC flows", n)
	}
}
