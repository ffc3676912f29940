package proxy

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestQUICNamedDenialNotHidden plays a client that floods one-packet
// denials to keep its early-denial bucket empty, then opens a QUIC flow
// to a name the policy denies. That denial used to draw on the same
// bucket and went unrecorded, so the name never reached the records; it
// now has a bucket of its own. The flood is played by taking from the
// client's bucket directly, as each early denial does, for as long as
// the test runs: a flood of real flows had to outpace the bucket's
// refill, which a loaded machine did not always do (the test then
// failed on its premise, not on the proxy).
func TestQUICNamedDenialNotHidden(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	key := clientShareKey(netstack.FlowInfo{Endpoint: 7, Client: quicClient})
	var emptied atomic.Bool
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if ok, _ := p.denies.early.take(key, time.Now(), earlyDenyRate); !ok {
				emptied.Store(true)
			}
			runtime.Gosched()
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); !emptied.Load() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if !emptied.Load() {
		close(stop)
		<-stopped
		t.Fatal("the client's early-denial bucket never ran dry")
	}
	startFlow(p, quicClient, dst.addr(), quicFirstFlight(t, "blocked.example.test")...)
	named := func() (n int) {
		for _, r := range recs.parse(t) {
			if r.Kind == "quic" && r.SNI == "blocked.example.test" && r.Action == "deny" && r.Rule == "no-blocked" {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(10 * time.Second); named() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-stopped
	time.Sleep(100 * time.Millisecond) // a second record of it would be written by now
	if n := named(); n != 1 {
		t.Fatalf("%d records name the denied QUIC flow, want 1 (denied_unrecorded %d)", n, p.Stats().DeniedUnrecorded)
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
