package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestDialErrorBucketOnlyBeforeHandshake: a client's failed dials come
// from a bucket only where each cost it one packet, a SYN, the destination
// dialled before its handshake was done. One whose handshake was done and
// whose ClientHello was read first (a destination only a name could let
// through, dialled once the name is allowed) cost it a round trip and its
// first bytes, as a TLS refusal does, and is recorded even once the
// client's bucket is empty.
func TestDialErrorBucketOnlyBeforeHandshake(t *testing.T) {
	closedPort := func() netip.AddrPort {
		ln := clsMust(net.Listen("tcp", "127.0.0.1:0"))(t)
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).AddrPort()
	}
	direct, named := closedPort(), closedPort()
	doc := fmt.Sprintf(`
policy:
  default: deny
  destination_check: off
  rules:
    - name: web
      domains: [allowed.example]
      action: allow
    - name: direct
      dest_cidrs: ["127.0.0.1/32"]
      ports: ["%d"]
      action: allow
`, direct.Port())
	r := newClsRig(t, doc, clsOptions{})
	client := netip.MustParseAddr("127.0.0.1") // the key r.dial's connections have
	flow := func(port uint16) netstack.FlowInfo {
		return netstack.FlowInfo{Endpoint: 0x0123456789abcdef, Attachment: 0x1111222233334444, Client: netip.AddrPortFrom(client, port), Dest: direct}
	}
	const n = dialErrorRecordBurst + 50
	for i := range n {
		r.p.handleTCP(flow(uint16(20000+i)), refusedAcceptor{})
	}
	st := r.p.Stats()
	if st.TCPDialErrors != n || st.DialErrorsUnrecorded < 40 || st.DialErrorsUnrecorded > 50 {
		t.Fatalf("tcp_dial_errors %d, dial_errors_unrecorded %d: want %d, and about 50 unrecorded", st.TCPDialErrors, st.DialErrorsUnrecorded, n)
	}

	c := r.dial(t, named)
	defer c.Close()
	if err := tls.Client(c, &tls.Config{ServerName: "allowed.example"}).Handshake(); err == nil || !isReset(err) {
		t.Errorf("handshake to a closed port only its name allows: %v, want a reset", err)
	}
	if rec := r.record(t, c, "tls"); rec.Result != "refused" || rec.Rule != "web" || strings.Contains(rec.Error, "more failed dials") {
		t.Errorf("record %+v, want web's, its dial refused", rec)
	}
	if st := r.p.Stats(); st.TCPDialErrors != n+1 || st.DialErrorsUnrecorded > 50 {
		t.Errorf("tcp_dial_errors %d, dial_errors_unrecorded %d: want %d, and the refusal after a handshake recorded", st.TCPDialErrors, st.DialErrorsUnrecorded, n+1)
	}
}
