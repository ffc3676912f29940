package appliance

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// TestQUICGateActiveCounted: QUIC flows held at the gate, waiting for the
// rest of their ClientHello, have no host socket, so udp_active does not
// count them, and /stats showed nothing of a client holding its whole
// share of flows there, about 37 KiB each and more (review exhaust31 F2).
// quic_gate_active counts them while they wait, and no longer once they
// are relayed.
func TestQUICGateActiveCounted(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	// A policy that looks at names, so that QUIC flows wait at the gate.
	const pol = "policy:\n  default: allow\n  destination_check: off\n  rules:\n    - name: no-bad\n      domains: [\"bad.example.test\"]\n      action: deny\n"
	must(0, os.WriteFile(cfg, []byte(pol), 0o644))(t)
	r := newRig(t, func(o *Options) { o.Config = cfg }, nil)
	dst := serveUDP(t, netip.AddrPortFrom(r.net.server(5), 443), func([]byte) []byte { return nil })
	flight := quicClientFlight(t, "ok.example.test")
	if len(flight) < 2 {
		t.Fatalf("quic-go's ClientHello fits %d datagram: nothing to wait for", len(flight))
	}

	const n = 8
	src := func(i int) netip.AddrPort { return netip.AddrPortFrom(clientV4, uint16(20000+i)) }
	gauges := func(gated, active int64) func() string {
		return func() string {
			st := r.stats()
			if st.Proxy.QUICGateActive != gated || st.Proxy.UDPActive != active {
				return fmt.Sprintf("quic_gate_active %d, udp_active %d", st.Proxy.QUICGateActive, st.Proxy.UDPActive)
			}
			return ""
		}
	}
	for i := range n {
		must(0, r.ep.Send(innerUDP4(src(i), dst, flight[0])))(t)
	}
	waitFor(t, fmt.Sprintf("%d flows held at the gate", n), gauges(n, 0))
	for i := range n {
		for _, d := range flight[1:] {
			must(0, r.ep.Send(innerUDP4(src(i), dst, d)))(t)
		}
	}
	waitFor(t, fmt.Sprintf("the %d flows relayed", n), gauges(0, n))
}
