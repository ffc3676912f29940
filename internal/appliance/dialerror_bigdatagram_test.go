package appliance

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestDialErrorBucketNotForBigDatagrams (review rev32a F1): a UDP flow
// whose one datagram went to a closed port of an allowed destination
// still delivered that datagram: the destination's host took it in (a
// capture there reads it; here a raw socket does) and its kernel answered
// port unreachable. Such a flow was recorded from its client's
// failed-dial bucket whatever the datagram carried, so a client that had
// emptied the bucket first (120 SYNs to closed ports) sent 8,000- and
// 60,000-byte datagrams that reached the destination and left no record:
// the probe's 10 flows of 60,000 bytes, 600,000 bytes read there, had 0
// records. Now a flow whose client sent more than a record's size
// (dialErrorBucketBytes, 512) is recorded whatever the bucket holds, with
// its bytes; a smaller one still draws on the bucket
// (TestDialErrorRecordsBounded).
func TestDialErrorBucketNotForBigDatagrams(t *testing.T) {
	for _, size := range []int{600, 60000} {
		t.Run(strconv.Itoa(size), func(t *testing.T) { testDialErrorBucketNotForBigDatagrams(t, size) })
	}
}

func testDialErrorBucketNotForBigDatagrams(t *testing.T, size int) {
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	must(0, os.WriteFile(cfg, []byte("policy:\n  default: allow\n  destination_check: off\n"), 0o644))(t)
	// One sender: the simulator gives each flow a sender picked at random,
	// and a datagram's later fragments (no ports) are a flow of their own,
	// so with several a later fragment could overtake the first and be
	// dropped (fragment_without_flow: hosts send the first first), the
	// datagram lost; 4 runs in 15 lost a 60,000-byte one so.
	r := newRig(t, func(o *Options) { o.Config = cfg }, func(c *gwlbsim.Config) { c.Senders = 1 })

	// The destination: no socket on its ports, a raw socket reading every
	// UDP datagram that reaches its address, as a capture there would.
	dest := r.net.server(6)
	const basePort, flows = 7000, 10
	delivered := udpPayloadAt(t, dest, basePort, basePort+flows)

	// The client empties its failed-dial bucket with single SYNs to
	// closed ports, and before each flow sends more until one goes
	// unrecorded: the bucket is empty as the flow begins.
	closed := r.net.server(5)
	syn := 0
	sendSYNs := func(n int) {
		for range n {
			syn++
			must(0, r.ep.Send(innerSYN4(t, netip.AddrPortFrom(clientV4, uint16(41000+syn)), netip.AddrPortFrom(closed, uint16(20000+syn)), uint32(syn)*7919)))(t)
			time.Sleep(time.Millisecond)
		}
	}
	emptyBucket := func() {
		for range 100 {
			st := r.stats()
			sendSYNs(1)
			waitFor(t, "the SYN's failed dial", func() string {
				if r.stats().Proxy.TCPDialErrors == st.Proxy.TCPDialErrors {
					return "not yet"
				}
				return ""
			})
			if r.stats().Proxy.DialErrorsUnrecorded != st.Proxy.DialErrorsUnrecorded {
				return
			}
		}
		t.Fatal("100 SYNs to closed ports, each recorded: the bucket never emptied, the test would prove nothing")
	}
	st0 := r.stats()
	sendSYNs(120)
	waitFor(t, "120 failed dials", func() string {
		if d := r.stats().Proxy.TCPDialErrors - st0.Proxy.TCPDialErrors; d < 120 {
			return strconv.FormatUint(d, 10)
		}
		return ""
	})
	st1 := r.stats()

	payload := []byte(strings.Repeat("ABCDEFGHIJKLMNOPQRSTUVWXYZ", size/26+1)[:size])
	for i := range flows {
		emptyBucket()
		c := must(r.client.DialUDP(netip.AddrPortFrom(dest, uint16(basePort+i))))(t)
		must(c.Write(payload))(t)
		c.Close()
		want := uint64(i + 1)
		waitFor(t, "the flow to be refused", func() string {
			if d := r.stats().Proxy.UDPDialErrors - st1.Proxy.UDPDialErrors; d < want {
				return fmt.Sprintf("%d udp dial errors, %d bytes at the destination, %d fragments without a flow", d, delivered.Load(), r.stats().Netstack.Drops["fragment_without_flow"])
			}
			return ""
		})
	}
	waitFor(t, "the datagrams to reach the destination", func() string {
		if n := delivered.Load(); n < int64(flows*size) {
			return strconv.FormatInt(n, 10) + " bytes"
		}
		return ""
	})
	dests := make([]netip.AddrPort, flows)
	for i := range dests {
		dests[i] = netip.AddrPortFrom(dest, uint16(basePort+i))
	}
	recs := r.records(func(recs []records.Record) bool {
		for _, d := range dests {
			if findRecord(recs, "udp", d) == nil {
				return false
			}
		}
		return true
	})
	for _, d := range dests {
		rec := findRecord(recs, "udp", d)
		if rec.Result != "refused" || rec.BytesOut != int64(size) || rec.BytesIn != 0 || moreFailedDials.MatchString(rec.Error) {
			t.Errorf("flow to %s: result %s bytes_out %d bytes_in %d error %q; want refused, bytes_out %d, recorded on its own", d, rec.Result, rec.BytesOut, rec.BytesIn, rec.Error, size)
		}
	}
	st := r.stats()
	if d := st.Proxy.UDPDialErrors - st1.Proxy.UDPDialErrors; d != flows {
		t.Errorf("udp_dial_errors +%d, want +%d: each is a failed dial still", d, flows)
	}
	t.Logf("%d flows of %d bytes: %d bytes at the destination; the records' lines: %s", flows, size, delivered.Load(), recordLineSizes(t, r.logPath, "udp", dest))
}

// recordLineSizes lists the sizes in bytes of the access log's lines for
// records of kind to dest's address.
func recordLineSizes(t *testing.T, path, kind string, dest netip.Addr) string {
	t.Helper()
	f := must(os.Open(path))(t)
	defer f.Close()
	var sizes []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, `"kind":"`+kind+`"`) && strings.Contains(l, `"dest_ip":"`+dest.String()+`"`) {
			sizes = append(sizes, strconv.Itoa(len(l)+1))
		}
	}
	return strings.Join(sizes, " ")
}
