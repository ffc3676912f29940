package appliance

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// owedNote matches a failed-dial owed note: how many, their bytes, and
// the hosts named, each "(at least) b to H:p" or "... to H (ports p-q)"
// (owedHost).
var (
	owedNote = regexp.MustCompile(`(\d+) more failed dials from this client before this one, not recorded one by one: (\d+) bytes sent((?:[:,] (?:at least )?\d+ to [^ ,;()]+(?: \(ports \d+-\d+\))?)*)`)
	owedHost = regexp.MustCompile(`(?:at least )?(\d+) to ([^ ,;()]+)(?: \(ports (\d+)-(\d+)\))?`)
)

// TestDialErrorOwedBytesAccounted (review rev32c F1): a client spends its
// failed-dial bucket on SYNs to a closed host A, then sends datagrams of
// 512 bytes to closed ports of host B, whose capture (a raw socket) reads
// them: about 1 MB reached B with 2 to 6 records naming it, and the note
// of the rest said only how many went unrecorded, no bytes and no
// destination, and nothing at all for those after the client's last
// recorded failed dial. Now every byte B read is counted by a record's
// bytes_out or a note's bytes, a note names B (the host: each flow went to
// a port of its own, review rev33b F1), the client's last flow is
// recorded (its bucket refilled, with no further dial of the client's),
// and dial_errors_unrecorded_bytes is the notes' sum.
func TestDialErrorOwedBytesAccounted(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	must(0, os.WriteFile(cfg, []byte("policy:\n  default: allow\n  destination_check: off\n"), 0o644))(t)
	r := newRig(t, func(o *Options) { o.Config = cfg }, func(c *gwlbsim.Config) { c.Senders = 1 })
	a, b := r.net.server(5), r.net.server(6)
	const n, size = 600, 512
	delivered := udpPayloadAt(t, b, 7000, 7000+n)
	st0 := r.stats()
	const syns = 110
	var batch [][]byte
	for i := range syns {
		batch = append(batch, innerSYN4(t, netip.AddrPortFrom(clientV4, uint16(41000+i)), netip.AddrPortFrom(a, uint16(20000+i)), uint32(i)*7919))
	}
	must(r.ep.SendBatch(batch))(t)
	waitFor(t, "the SYNs' failed dials", func() string {
		if got := r.stats().Proxy.TCPDialErrors - st0.Proxy.TCPDialErrors; got < syns {
			return strconv.FormatUint(got, 10)
		}
		return ""
	})
	st1 := r.stats()
	sendPaced(t, r, st1, n, func(i int) []byte {
		return innerUDP4(netip.AddrPortFrom(clientV4, uint16(30000+i)), netip.AddrPortFrom(b, uint16(7000+i)), []byte(strings.Repeat("S", size)))
	})
	waitFor(t, "the datagrams' failed dials", func() string {
		if got := r.stats().Proxy.UDPDialErrors - st1.Proxy.UDPDialErrors; got < n {
			return strconv.FormatUint(got, 10)
		}
		return ""
	})
	// Every failed dial is recorded or counted unrecorded, the client's
	// last held one written once its bucket has a token again.
	mine := func(recs []records.Record) (out []records.Record) {
		for _, rec := range recs {
			if rec.ClientIP == clientV4.String() && (rec.Kind == "udp" || rec.Kind == "tcp") && rec.Result == "refused" {
				out = append(out, rec)
			}
		}
		return out
	}
	var st stats
	recs := mine(r.records(func(recs []records.Record) bool {
		st = r.stats()
		return uint64(len(mine(recs)))+st.Proxy.DialErrorsUnrecorded-st0.Proxy.DialErrorsUnrecorded == syns+n
	}))
	var out, noted int64
	var namesB bool
	for _, rec := range recs {
		if rec.Kind == "udp" && rec.DestIP == b.String() {
			out += rec.BytesOut
		}
		if m := owedNote.FindStringSubmatch(rec.Error); m != nil {
			noted += must(strconv.ParseInt(m[2], 10, 64))(t)
			for _, h := range owedHost.FindAllStringSubmatch(m[3], -1) {
				host, err := netip.ParseAddr(h[2])
				if h[3] == "" {
					var ap netip.AddrPort
					ap, err = netip.ParseAddrPort(h[2])
					host = ap.Addr()
				}
				if err == nil && host == b {
					namesB = true
				}
			}
		}
	}
	got := delivered.Load()
	t.Logf("%d flows of %d bytes to %s: the destination read %d bytes; %d records, bytes_out %d to it, notes %d bytes; dial_errors_unrecorded +%d, _bytes +%d",
		n, size, b, got, len(recs), out, noted, st.Proxy.DialErrorsUnrecorded-st0.Proxy.DialErrorsUnrecorded, st.Proxy.DialErrorsUnrecordedBytes-st0.Proxy.DialErrorsUnrecordedBytes)
	if out+noted < got || out+noted > n*size {
		t.Errorf("records (%d) and notes (%d) account for %d bytes; the destination read %d of %d sent", out, noted, out+noted, got, n*size)
	}
	if !namesB {
		t.Errorf("no note names %s, where the unrecorded flows went", b)
	}
	if d := st.Proxy.DialErrorsUnrecordedBytes - st0.Proxy.DialErrorsUnrecordedBytes; d != uint64(noted) {
		t.Errorf("dial_errors_unrecorded_bytes +%d, the notes say %d", d, noted)
	}
}
