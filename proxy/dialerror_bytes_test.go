package proxy

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// emptyDialErrorBucket takes every record from the failed-dial bucket of
// the client of flow, and stops its refill for an hour, so that whatever
// comes from it next goes unrecorded however slow the test runs.
func emptyDialErrorBucket(p *Proxy, flow netstack.FlowInfo) {
	k := clientShareKey(flow)
	for {
		if ok, _ := p.denies.dialErrors.take(k, time.Now(), dialErrorRate); !ok {
			break
		}
	}
	l := &p.denies.dialErrors
	l.mu.Lock()
	l.m[k].last = time.Now().Add(time.Hour) // refilled only from then on
	l.m[k].skipped = 0
	l.mu.Unlock()
}

// dialErrorHeld reports whether client k's bucket holds a failed dial for
// its refill.
func dialErrorHeld(p *Proxy, k shareKey) bool {
	l := &p.denies.dialErrors
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[k]
	return b != nil && b.held != nil
}

// refillDialErrorBucket lets client k's failed-dial bucket refill from
// now on, as emptyDialErrorBucket stopped it.
func refillDialErrorBucket(p *Proxy, k shareKey) {
	l := &p.denies.dialErrors
	l.mu.Lock()
	l.m[k].last = time.Now()
	l.mu.Unlock()
}

// closedUDPPort returns a loopback UDP port where nothing listens: a
// datagram sent there is answered port unreachable.
func closedUDPPort(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestDialErrorBucketOnlyForSmallDatagrams (review rev32a F1): a UDP flow
// whose destination answered port unreachable at once was recorded from
// its client's failed-dial bucket whatever its opening datagram carried,
// although that datagram reached the destination (whose kernel took it in
// before it answered) and could be up to 64 KB: a client that had spent
// the bucket first sent data that left no record. Now only a flow whose
// client sent at most dialErrorBucketBytes draws on the bucket; one that
// sent more is recorded, with its bytes, whatever the bucket holds. The
// same holds for a flow whose host socket could not be opened, by what
// its client's datagrams held. Each counts in udp_dial_errors as before.
func TestDialErrorBucketOnlyForSmallDatagrams(t *testing.T) {
	const policyDoc = "policy:\n  default: allow\n  destination_check: off\n"
	for _, tc := range []struct {
		name       string
		socketFail bool
		size       int
		bucketed   bool
	}{
		{"refused, a record's size", false, dialErrorBucketBytes, true},
		{"refused, one byte more", false, dialErrorBucketBytes + 1, false},
		{"refused, 60000 bytes", false, 60000, false},
		{"no host socket, a record's size", true, dialErrorBucketBytes, true},
		{"no host socket, one byte more", true, dialErrorBucketBytes + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.socketFail {
				dialHostUDP = func(string, *net.UDPAddr, *net.UDPAddr) (*net.UDPConn, error) {
					return nil, &net.OpError{Op: "dial", Net: "udp", Err: syscall.ENETUNREACH}
				}
				t.Cleanup(func() { dialHostUDP = net.DialUDP })
			}
			p, _, recs := udpProxy(t, policyDoc, nil)
			dest := closedUDPPort(t)
			client := netip.MustParseAddrPort("198.18.0.7:41000")
			emptyDialErrorBucket(p, netstack.FlowInfo{Endpoint: 7, Client: client, Dest: dest})
			st0 := p.Stats()

			payload := make([]byte, tc.size)
			c, done := startFlow(p, client, dest, payload)
			defer c.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the flow did not end")
			}
			// The flow's end: its record, or its failed dial held for the
			// bucket's refill (dialerrorowed.go).
			k := clientShareKey(netstack.FlowInfo{Endpoint: 7, Client: client, Dest: dest})
			deadline := time.Now().Add(10 * time.Second)
			for len(recs.parse(t)) == 0 && !dialErrorHeld(p, k) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond) // anything else it made shows by now
			st := p.Stats()
			if d := st.UDPDialErrors - st0.UDPDialErrors; d != 1 {
				t.Errorf("udp_dial_errors +%d, want +1", d)
			}
			unrecorded := st.DialErrorsUnrecorded - st0.DialErrorsUnrecorded
			got := recs.parse(t)
			if tc.bucketed {
				if len(got) != 0 || unrecorded != 0 || !dialErrorHeld(p, k) {
					t.Fatalf("%d records, dial_errors_unrecorded +%d: a flow of %d bytes, its client's bucket empty, want none, +0 and the flow held for the bucket's refill", len(got), unrecorded, tc.size)
				}
				// The bucket refills: the held flow's record is written then,
				// with its bytes.
				refillDialErrorBucket(p, k)
				got = recs.records(t, 1)
				wantOut := int64(tc.size)
				if tc.socketFail {
					wantOut = 0
				}
				if r := got[0]; r.Kind != "udp" || r.BytesOut != wantOut || moreFailedDialsIn(r) || p.Stats().DialErrorsUnrecorded != st0.DialErrorsUnrecorded {
					t.Errorf("record kind %s bytes_out %d error %q, dial_errors_unrecorded +%d; want the held flow's, bytes_out %d, no note, +0", r.Kind, r.BytesOut, r.Error, p.Stats().DialErrorsUnrecorded-st0.DialErrorsUnrecorded, wantOut)
				}
				return
			}
			wantOut, wantResult := int64(tc.size), "refused"
			if tc.socketFail {
				wantOut, wantResult = 0, "unreachable" // nothing was sent
			}
			if len(got) != 1 || unrecorded != 0 {
				t.Fatalf("%d records, dial_errors_unrecorded +%d: a flow of %d bytes, want its record whatever the bucket holds", len(got), unrecorded, tc.size)
			}
			if r := got[0]; r.Kind != "udp" || r.Result != wantResult || r.BytesOut != wantOut || r.BytesIn != 0 || moreFailedDialsIn(r) {
				t.Errorf("record kind %s result %s bytes_out %d bytes_in %d error %q; want udp, %s, bytes_out %d", r.Kind, r.Result, r.BytesOut, r.BytesIn, r.Error, wantResult, wantOut)
			}
		})
	}
}

func moreFailedDialsIn(r records.Record) bool {
	return strings.Contains(r.Error, "more failed dials")
}
