package proxy

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// refusedAcceptor is a connection attempt the proxy refuses before any
// handshake.
type refusedAcceptor struct{}

func (refusedAcceptor) Accept() (net.Conn, error) { panic("accepted a refused attempt") }
func (refusedAcceptor) Reject()                   {}

// TestEarlyDenyRecordsBounded plays a client that floods SYNs to a
// forbidden destination (the instance metadata service): one packet each,
// and each was a deny record, so one client could fill the records queue
// for everyone. Its records are now bounded by a bucket of its own; the
// rest are counted, and its next record says how many; another client's
// denial is still recorded.
func TestEarlyDenyRecordsBounded(t *testing.T) {
	r := newClsRig(t, "policy:\n  default: allow\n", clsOptions{})
	imds := netip.MustParseAddrPort("169.254.169.254:80")
	flood := netip.MustParseAddr("198.18.0.9")
	const n = 500
	for i := range n {
		r.p.handleTCP(netstack.FlowInfo{Endpoint: 7, Client: netip.AddrPortFrom(flood, uint16(20000+i)), Dest: imds}, refusedAcceptor{})
	}
	other := netip.MustParseAddr("198.18.0.10")
	r.p.handleTCP(netstack.FlowInfo{Endpoint: 7, Client: netip.AddrPortFrom(other, 20000), Dest: imds}, refusedAcceptor{})
	time.Sleep(200 * time.Millisecond) // the flooding client's bucket refills a little
	r.p.handleTCP(netstack.FlowInfo{Endpoint: 7, Client: netip.AddrPortFrom(flood, 30000), Dest: imds}, refusedAcceptor{})

	st := r.p.Stats()
	recorded := n + 2 - int(st.DeniedUnrecorded)
	if st.Denied != n+2 || recorded < denyRecordBurst || recorded > denyRecordBurst+20 {
		t.Fatalf("denied %d, unrecorded %d: %d recorded, want all %d counted and about %d recorded", st.Denied, st.DeniedUnrecorded, recorded, n+2, denyRecordBurst+2)
	}
	var got, fromOther, summary int
	for deadline := time.Now().Add(3 * time.Second); got < recorded && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got, fromOther, summary = 0, 0, 0
		for _, rec := range r.recs.parse(t) {
			if rec.Action != "deny" {
				continue
			}
			got++
			if rec.ClientIP == other.String() {
				fromOther++
			}
			if strings.Contains(rec.Error, "more refused from this client before this one") {
				summary++
			}
		}
	}
	if got != recorded || fromOther != 1 || summary != 1 {
		t.Fatalf("%d deny records (want %d), %d of the other client (want 1), %d saying how many went unrecorded (want 1)", got, recorded, fromOther, summary)
	}
}

// TestDenyLimiterBounded: the buckets are bounded; clients beyond the
// bound share one, and buckets that have refilled make room again.
func TestDenyLimiterBounded(t *testing.T) {
	var l recordLimiter
	t0 := time.Unix(1000, 0)
	key := func(i int) shareKey {
		return shareKey{endpoint: 1, client: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}
	}
	for i := range maxDenyClients {
		if ok, _ := l.take(key(i), t0, earlyDenyRate); !ok {
			t.Fatalf("client %d's first denial not recorded", i)
		}
	}
	// Beyond the bound, new clients share the overflow bucket.
	for i := range denyRecordBurst {
		if ok, _ := l.take(key(maxDenyClients+i), t0, earlyDenyRate); !ok {
			t.Fatalf("overflow client %d: not recorded", i)
		}
	}
	if ok, _ := l.take(key(maxDenyClients+denyRecordBurst), t0, earlyDenyRate); ok || len(l.m) != maxDenyClients {
		t.Fatalf("the overflow bucket gave more than its %d records (map %d)", denyRecordBurst, len(l.m))
	}
	// A later client of the overflow bucket is not told of the others'.
	t1 := t0.Add(500 * time.Millisecond) // within a second of the last sweep: none now
	if ok, skipped := l.take(key(maxDenyClients+denyRecordBurst+2), t1, earlyDenyRate); !ok || skipped != 0 {
		t.Fatalf("an overflow client's record: recorded %v, %d unrecorded before it, want true and 0", ok, skipped)
	}
	// A client that runs dry and goes quiet: its bucket goes with the rest.
	for range 2 * denyRecordBurst {
		l.take(key(0), t1, earlyDenyRate)
	}
	if l.m[key(0)].skipped == 0 {
		t.Fatal("the client did not run dry")
	}
	// Later, every bucket has refilled: a new client gets one of its own.
	if ok, _ := l.take(key(maxDenyClients+denyRecordBurst+1), t0.Add(10*time.Second), earlyDenyRate); !ok || len(l.m) != 1 {
		t.Fatalf("after the buckets refilled: recorded %v, %d buckets kept, want 1", ok, len(l.m))
	}
}

// TestAddressDenyRefusedAtSYN: a TCP flow the policy denies on its
// addresses alone is refused at its SYN: never accepted (refusedAcceptor
// panics if it is), its destination never dialled, and its record names
// the rule. Without the early answer the appliance would complete the
// handshake of every denied address and port, and each such connection
// would hold a waiting slot until its bytes, or nameWait, decided it.
func TestAddressDenyRefusedAtSYN(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialled := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
			dialled <- struct{}{}
		}
	}()
	r := newClsRig(t, "policy:\n  default: allow\n  rules:\n    - name: no-net\n      dest_cidrs: [\"127.0.0.0/8\"]\n      action: deny\n", clsOptions{})
	dest := ln.Addr().(*net.TCPAddr).AddrPort()
	r.p.handleTCP(netstack.FlowInfo{Endpoint: 7, Client: netip.MustParseAddrPort("198.18.0.9:20000"), Dest: dest}, refusedAcceptor{})
	var rec *records.Record
	for deadline := time.Now().Add(3 * time.Second); rec == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, got := range r.recs.parse(t) {
			if got.Action == "deny" {
				rec = &got
			}
		}
	}
	if rec == nil || rec.Rule != "no-net" || rec.Result != "denied" || rec.Policy == "" {
		t.Fatalf("record %+v, want one deny by no-net naming its policy; all %+v", rec, r.recs.parse(t))
	}
	select {
	case <-dialled:
		t.Fatal("the destination of a flow denied on its addresses was dialled")
	case <-time.After(100 * time.Millisecond):
	}
}
