package appliance

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// innerSYN4 builds an inner IPv4 TCP SYN, as a client opening a
// connection sends it, with valid checksums.
func innerSYN4(t testing.TB, src, dst netip.AddrPort, seq uint32) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), Id: uint16(seq)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, SYN: true, Window: 64240,
		Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// dialErrorPolicy lets everything through by address, its destination
// check off, but a range of ports, which it denies.
const dialErrorPolicy = `
policy:
  default: allow
  destination_check: off
  rules:
    - name: closed-range
      dest_cidrs: ["127.0.0.0/8"]
      ports: ["30000-30099"]
      action: deny
`

var moreFailedDials = regexp.MustCompile(`(\d+) more failed dials from this client before this one, not recorded one by one`)

// TestDialErrorRecordsBounded plays a client that sends single SYNs (or
// single 1-byte UDP datagrams), each from a new port, to ports of an
// allowed destination where nothing listens (review exhaust31 F1). Each
// was dialled, refused and recorded, one record of about 400 bytes for
// every packet, from no bucket, while the same packets to a denied
// destination were recorded from the client's bucket. Now the failed
// dials' records come from a bucket of their own: the client's first 100
// and 20 a second after, the rest counted in dial_errors_unrecorded and
// each said by the next one recorded. The client's denials are still
// recorded (they draw on another bucket), and so is another client's
// failed dial.
func TestDialErrorRecordsBounded(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) { testDialErrorRecordsBounded(t, proto) })
	}
}

func testDialErrorRecordsBounded(t *testing.T, proto string) {
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	must(0, os.WriteFile(cfg, []byte(dialErrorPolicy), 0o644))(t)
	r := newRig(t, func(o *Options) { o.Config = cfg }, nil)
	closed := r.net.server(5) // nothing listens there
	packet := func(src, dst netip.AddrPort, i int) []byte {
		if proto == "udp" {
			return innerUDP4(src, dst, []byte("x"))
		}
		return innerSYN4(t, src, dst, uint32(i)*7919)
	}
	dialErrors := func(s stats) uint64 {
		if proto == "udp" {
			return s.Proxy.UDPDialErrors
		}
		return s.Proxy.TCPDialErrors
	}

	const n = 300
	st0 := r.stats()
	start := time.Now()
	sendPaced(t, r, st0, n, func(i int) []byte {
		return packet(netip.AddrPortFrom(clientV4, uint16(40000+i)), netip.AddrPortFrom(closed, uint16(20000+i)), i)
	})
	waitFor(t, "every dial to have failed", func() string {
		if got := dialErrors(r.stats()) - dialErrors(st0); got < n {
			return strconv.FormatUint(got, 10) + " failed dials"
		}
		return ""
	})
	st := r.stats()
	if st.Proxy.Denied != st0.Proxy.Denied || st.Proxy.DeniedUnrecorded != 0 {
		t.Errorf("denied %d, denied_unrecorded %d: a failed dial is not a denial", st.Proxy.Denied-st0.Proxy.Denied, st.Proxy.DeniedUnrecorded)
	}

	// The client's next failed dial, once its bucket has a record again,
	// says how many went unrecorded since its last one recorded (none if
	// the flood's last was), so that the records say them all.
	time.Sleep(100 * time.Millisecond)
	last := netip.AddrPortFrom(closed, 20999)
	must(0, r.ep.Send(packet(netip.AddrPortFrom(clientV4, 39999), last, n)))(t)
	// Its denial, and another client's failed dial, are recorded.
	denied := netip.AddrPortFrom(closed, 30000)
	must(0, r.ep.Send(packet(netip.AddrPortFrom(clientV4, 39998), denied, n+1)))(t)
	other := netip.MustParseAddr("198.18.0.99")
	otherDest := netip.AddrPortFrom(closed, 21000)
	must(0, r.ep.Send(packet(netip.AddrPortFrom(other, 40000), otherDest, n+2)))(t)

	isFailed := func(rec *records.Record) bool {
		return rec.Kind == proto && rec.Result == "refused"
	}
	recs := r.records(func(recs []records.Record) bool {
		return findRecord(recs, proto, last) != nil && findRecord(recs, proto, denied) != nil && findRecord(recs, proto, otherDest) != nil
	})
	// Read only now: a dial counts among the failed ones before its
	// bucket decides on its record, and the flood's last one the bucket
	// had no room for is held until a token comes back; the last dial
	// above, recorded, took every one left unrecorded into its note.
	elapsed := time.Since(start)
	unrecorded := int(r.stats().Proxy.DialErrorsUnrecorded - st0.Proxy.DialErrorsUnrecorded)
	var mine, said int
	for i := range recs {
		rec := &recs[i]
		if rec.ClientIP != clientV4.String() || !isFailed(rec) {
			continue
		}
		mine++
		if m := moreFailedDials.FindStringSubmatch(rec.Error); m != nil {
			said += must(strconv.Atoi(m[1]))(t)
		}
	}
	if mine+unrecorded != n+1 || said != unrecorded {
		t.Errorf("the client's %d failed dials: %d records and %d unrecorded (dial_errors_unrecorded); the records say %d went unrecorded", n+1, mine, unrecorded, said)
	}
	// The bucket's 100, and 20 a second since the flood began.
	if recorded, most := mine, 100+int(20*elapsed.Seconds())+1; recorded < 100 || recorded > most {
		t.Errorf("%d failed dials in %s: %d recorded; want 100 to %d", n+1, elapsed.Round(time.Millisecond), recorded, most)
	}
	if rec := findRecord(recs, proto, denied); rec.Action != "deny" || rec.Rule != "closed-range" {
		t.Errorf("the client's denial: %+v, want denied by closed-range", rec)
	}
	if rec := findRecord(recs, proto, otherDest); rec.ClientIP != other.String() || !isFailed(rec) || moreFailedDials.MatchString(rec.Error) {
		t.Errorf("the other client's failed dial: %+v, want its own, refused", rec)
	}
}

// TestDialErrorBucketNotForDataFlows (review rev31c F1): a UDP flow
// allowed by address that carried 200 KB to a destination that read it
// all and never answered, then closed its port, ends `refused` with
// bytes_in 0 when the client's next datagram meets the closed port. Such
// a flow did not cost its client one datagram, and its record is no
// failed dial's: it was drawn from the failed-dial bucket, so a client
// that had emptied that bucket first (120 single SYNs to closed ports)
// kept the 200 KB flow out of the records, counted only in
// dial_errors_unrecorded and udp_dial_errors. It is recorded now, as any
// relayed flow, whatever the bucket holds.
func TestDialErrorBucketNotForDataFlows(t *testing.T) {
	for _, drain := range []bool{false, true} {
		t.Run(fmt.Sprintf("drained=%v", drain), func(t *testing.T) { testDialErrorBucketNotForDataFlows(t, drain) })
	}
}

func testDialErrorBucketNotForDataFlows(t *testing.T, drain bool) {
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	must(0, os.WriteFile(cfg, []byte("policy:\n  default: allow\n  destination_check: off\n"), 0o644))(t)
	r := newRig(t, func(o *Options) { o.Config = cfg }, nil)

	pc := must(net.ListenPacket("udp", netip.AddrPortFrom(r.net.server(3), 0).String()))(t)
	defer pc.Close()
	srv := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	var got atomic.Int64
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			got.Add(int64(n))
		}
	}()
	atServer := func(want int64) func() string {
		return func() string {
			if n := got.Load(); n < want {
				return strconv.FormatInt(n, 10) + " bytes"
			}
			return ""
		}
	}

	c := must(r.client.DialUDP(srv))(t)
	defer c.Close()
	payload := make([]byte, 1000)
	const n = 200
	for i := range n {
		must(c.Write(payload))(t)
		if i%20 == 19 { // kept a few datagrams ahead of the server, so that none is lost
			waitFor(t, "the server to read", atServer(int64(i+1)*1000))
		}
	}

	st0 := r.stats()
	if drain {
		closed := r.net.server(5)
		for i := range 120 {
			must(0, r.ep.Send(innerSYN4(t, netip.AddrPortFrom(clientV4, uint16(41000+i)), netip.AddrPortFrom(closed, uint16(20000+i)), uint32(i)*7919)))(t)
			time.Sleep(time.Millisecond)
		}
		waitFor(t, "120 failed dials", func() string {
			if d := r.stats().Proxy.TCPDialErrors - st0.Proxy.TCPDialErrors; d < 120 {
				return strconv.FormatUint(d, 10)
			}
			return ""
		})
	}
	st1 := r.stats()
	if drain && st1.Proxy.DialErrorsUnrecorded == st0.Proxy.DialErrorsUnrecorded {
		t.Fatal("120 failed dials left the client's bucket with room: the test would prove nothing")
	}
	pc.Close() // the destination's port closes
	must(c.Write(payload))(t)
	// The flow's end: its record, or a failed dial unrecorded.
	var rec *records.Record
	waitFor(t, "the udp flow to end", func() string {
		rec = findRecord(r.readRecords(), "udp", srv)
		if rec != nil || r.stats().Proxy.DialErrorsUnrecorded != st1.Proxy.DialErrorsUnrecorded {
			return ""
		}
		return "no record, nothing unrecorded"
	})
	st := r.stats()
	if rec == nil {
		t.Fatalf("a UDP flow that carried %d bytes has no record (dial_errors_unrecorded %d -> %d)", got.Load(), st1.Proxy.DialErrorsUnrecorded, st.Proxy.DialErrorsUnrecorded)
	}
	if rec.Result != "refused" || rec.BytesOut != (n+1)*1000 || rec.BytesIn != 0 || moreFailedDials.MatchString(rec.Error) {
		t.Errorf("the flow's record: %+v, want refused with bytes_out %d and no word of failed dials", rec, (n+1)*1000)
	}
	if st.Proxy.UDPDialErrors != st1.Proxy.UDPDialErrors || st.Proxy.DialErrorsUnrecorded != st1.Proxy.DialErrorsUnrecorded {
		t.Errorf("udp_dial_errors +%d, dial_errors_unrecorded +%d: a flow that carried data is no failed dial",
			st.Proxy.UDPDialErrors-st1.Proxy.UDPDialErrors, st.Proxy.DialErrorsUnrecorded-st1.Proxy.DialErrorsUnrecorded)
	}
}
