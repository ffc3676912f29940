package appliance

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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
	batch := make([][]byte, 0, 32)
	for i := range n {
		batch = append(batch, packet(netip.AddrPortFrom(clientV4, uint16(40000+i)), netip.AddrPortFrom(closed, uint16(20000+i)), i))
		if len(batch) < cap(batch) && i < n-1 {
			continue
		}
		must(r.ep.SendBatch(batch))(t)
		batch = batch[:0]
		// Kept at most a few batches ahead of the appliance, so that
		// none is lost on the way in.
		for k := 0; k < 2000 && r.stats().Netstack.PacketsIn-st0.Netstack.PacketsIn+128 < uint64(i+1); k++ {
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(t, "every dial to have failed", func() string {
		if got := dialErrors(r.stats()) - dialErrors(st0); got < n {
			return strconv.FormatUint(got, 10) + " failed dials"
		}
		return ""
	})
	flood := time.Since(start)
	st := r.stats()
	unrecorded := int(st.Proxy.DialErrorsUnrecorded)
	recorded := n - unrecorded
	// The bucket's 100, and 20 a second while the flood lasted.
	if most := 100 + int(20*flood.Seconds()) + 1; recorded < 100 || recorded > most {
		t.Errorf("%d failed dials in %s: %d unrecorded, so %d recorded; want 100 to %d", n, flood.Round(time.Millisecond), unrecorded, recorded, most)
	}
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
	if mine != recorded+1 || said != unrecorded {
		t.Errorf("the client's failed dials: %d records, want %d; they say %d went unrecorded, want %d (dial_errors_unrecorded)", mine, recorded+1, said, unrecorded)
	}
	if rec := findRecord(recs, proto, denied); rec.Action != "deny" || rec.Rule != "closed-range" {
		t.Errorf("the client's denial: %+v, want denied by closed-range", rec)
	}
	if rec := findRecord(recs, proto, otherDest); rec.ClientIP != other.String() || !isFailed(rec) || moreFailedDials.MatchString(rec.Error) {
		t.Errorf("the other client's failed dial: %+v, want its own, refused", rec)
	}
}
