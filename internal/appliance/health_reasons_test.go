package appliance

import (
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// geneveConns returns the netstack's GENEVE sockets, which it does not
// export: a test makes them fail the way a broken socket would.
func geneveConns(t *testing.T, a *Appliance) []*net.UDPConn {
	t.Helper()
	v := reflect.ValueOf(a.netstack).Elem().FieldByName("conns")
	if !v.IsValid() {
		t.Fatal("netstack.Server has no field conns any more: update geneveConns")
	}
	return *(*[]*net.UDPConn)(unsafe.Pointer(v.UnsafeAddr()))
}

// TestHealthBrokenReaderErrors: a GENEVE reader that reads nothing but
// errors for longer than --record-stall fails the health check, and it
// passes again once a read succeeds. The appliance then reads no packet
// from the GWLB, which would go on sending it flows while the health check
// said "serving".
func TestHealthBrokenReaderErrors(t *testing.T) {
	r := newRig(t, func(o *Options) {
		o.RecordStall = 300 * time.Millisecond
		o.Readers = 1
	}, nil)
	waitHealth(t, r, 200, "serving")
	conns := geneveConns(t, r.app)
	for _, c := range conns {
		// A deadline in the past: every read fails at once.
		if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
	}
	waitHealth(t, r, 503, "nothing but errors")
	for _, c := range conns {
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	// A reader counts as failing until a read succeeds: one datagram,
	// junk to the netstack, ends the run of errors.
	u, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.app.netstack.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("not GENEVE")); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, r, 200, "serving")
}

// TestHealthBrokenRecordsDropped: access records dropped without a break
// for longer than --record-stall (and not for less) are a reason of their
// own for the health check to fail: new flows would go unaudited here, and
// the GWLB should send them to another target. The reason follows
// --record-stall's value, not a multiple of it.
func TestHealthBrokenRecordsDropped(t *testing.T) {
	r := newRig(t, func(o *Options) { o.RecordStall = time.Second }, nil)
	why := r.app.broken(records.Stats{DroppingSeconds: 2, Dropped: 5})
	if len(why) != 1 || !strings.Contains(why[0], "dropped for") {
		t.Errorf("broken() with records dropping for 2s (stall 1s): %q, want the dropping reason", why)
	}
	if why := r.app.broken(records.Stats{DroppingSeconds: 0.5}); len(why) != 0 {
		t.Errorf("broken() with records dropping for 0.5s (stall 1s): %q, want none", why)
	}
}
