package appliance

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck"
)

// MaxDialTimeout is the longest --dial-timeout. Linux gives up a connect
// after about 2 minutes (tcp_syn_retries 6: 127 s), so a longer timeout
// waits for nothing more; and twice the timeout keeps a flow not yet
// established in the flow table (the transitory timeout): unbounded, that
// doubling overflowed past about 146 years, and the timeout became the
// 30 s floor without a word.
const MaxDialTimeout = 10 * time.Minute

// Validate reports the first option that is out of range, naming its flag.
func (o *Options) Validate() error {
	if o.TCPIdleTimeout < 60*time.Second || o.TCPIdleTimeout > 6000*time.Second {
		return fmt.Errorf("--tcp-idle-timeout %s: the GWLB allows 60s to 6000s", o.TCPIdleTimeout)
	}
	if o.IdleTimeout <= 0 {
		return fmt.Errorf("--idle-timeout %s: must be positive", o.IdleTimeout)
	}
	if o.DialTimeout <= 0 { // proxy.New would quietly make it 10 s
		return fmt.Errorf("--dial-timeout %s: must be positive", o.DialTimeout)
	}
	if o.DialTimeout > MaxDialTimeout {
		return fmt.Errorf("--dial-timeout %s: must be at most %s (the kernel gives up connecting after about 2m by default)", o.DialTimeout, MaxDialTimeout)
	}
	if o.Readers < 0 {
		return fmt.Errorf("--readers %d: must not be negative (0: one per CPU)", o.Readers)
	}
	if err := checkGeneveAddr(o.GeneveAddr); err != nil {
		return err
	}
	if err := checkAdminAddr(o.AdminAddr); err != nil {
		return err
	}
	if err := CheckTrustHost(o.TrustHost); err != nil {
		return err
	}
	if o.DrainTimeout < 0 {
		return fmt.Errorf("--drain-timeout %s: must not be negative", o.DrainTimeout)
	}
	if o.DrainMin < 0 || o.DrainMin > o.DrainTimeout {
		return fmt.Errorf("--drain-min %s: must be between 0 and --drain-timeout (%s)", o.DrainMin, o.DrainTimeout)
	}
	if o.WriteStallTimeout <= 0 {
		return fmt.Errorf("--write-stall-timeout %s: must be positive", o.WriteStallTimeout)
	}
	if o.MaxFlows <= 0 {
		return fmt.Errorf("--max-flows %d: must be positive", o.MaxFlows)
	}
	if o.MaxFlowsPerClient < 0 {
		return fmt.Errorf("--max-flows-per-client %d: must not be negative (0: a tenth of --max-flows)", o.MaxFlowsPerClient)
	}
	if o.MaxEndpoints <= 0 {
		return fmt.Errorf("--max-endpoints %d: must be positive", o.MaxEndpoints)
	}
	if o.AnyGWLBSender && len(o.GWLBCIDRs) > 0 {
		return errors.New(`--gwlb-cidrs: "any" and CIDRs do not go together`)
	}
	if o.AckDelay < 0 || o.AckDelay > netstack.MaxAckDelay {
		return fmt.Errorf("--ack-delay %s: must be between 0 (off) and %s", o.AckDelay, netstack.MaxAckDelay)
	}
	if o.MTU != 0 && (o.MTU < 1280 || o.MTU > netstack.DefaultMTU) {
		return fmt.Errorf("--mtu %d: must be between 1280 and %d", o.MTU, netstack.DefaultMTU)
	}
	if o.DNSResolver != "" {
		if _, err := destcheck.ParseResolver(o.DNSResolver); err != nil {
			return fmt.Errorf("--dns-resolver %w", err)
		}
	}
	if len(o.DNSPorts) == 0 || slices.Contains(o.DNSPorts, 0) {
		return fmt.Errorf("--dns-ports %v: want one or more ports, 1-65535", o.DNSPorts)
	}
	if o.MaxUDPFlowsPerClient <= 0 {
		return fmt.Errorf("--max-udp-flows-per-client %d: must be positive", o.MaxUDPFlowsPerClient)
	}
	if o.MaxEchoFlowsPerClient <= 0 {
		return fmt.Errorf("--max-echo-flows-per-client %d: must be positive", o.MaxEchoFlowsPerClient)
	}
	if err := clientkey.CheckIPv6Bits(o.IPv6ClientPrefix); err != nil {
		return err
	}
	if o.DNSCacheSize < 0 {
		return fmt.Errorf("--dns-cache-size %d: must not be negative (0: %d)", o.DNSCacheSize, destcheck.DefaultMaxEntries)
	}
	// Refused, not capped by destcheck without a word: a size past any
	// memory is a mistake (a value meant for another flag, bytes).
	if o.DNSCacheSize > destcheck.MaxMaxEntries {
		return fmt.Errorf("--dns-cache-size %d: must be at most %d", o.DNSCacheSize, destcheck.MaxMaxEntries)
	}
	switch o.ReturnPath {
	case netstack.ReturnPathAuto, netstack.ReturnPathRaw, netstack.ReturnPathBound:
	default:
		return fmt.Errorf("--return-path %q: want auto, raw or bound", o.ReturnPath)
	}
	if len(o.Capture.Filters) > 0 && o.Capture.PcapDir == "" {
		return errors.New("--pcap-filter: needs --pcap-dir")
	}
	if o.Capture.Plaintext && o.Capture.PcapDir == "" && o.Capture.MirrorTAP == "" {
		return errors.New("--capture-plaintext: needs --pcap-dir or --mirror-tap")
	}
	if o.Capture.PcapDir != "" || o.Capture.MirrorTAP != "" {
		if err := o.Capture.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// checkGeneveAddr checks --geneve-addr as checkAdminAddr does --admin-addr,
// before anything starts: an empty value would be replaced by :6081 without
// a word, and port 0 would take a random port while the health check answers
// and the GWLB's GENEVE to 6081 goes unheard (and unrefused at the senders).
// GENEVE is taken on IPv4 only, so the host is an IPv4 address or none.
func checkGeneveAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("--geneve-addr %q: want an IPv4 host:port or :port, such as :6081", addr)
	}
	n, err := net.LookupPort("udp", port)
	if err != nil {
		return fmt.Errorf("--geneve-addr %q: %w", addr, err)
	}
	var a netip.Addr
	if host != "" {
		a, err = netip.ParseAddr(host)
		if err != nil || !a.Is4() {
			return fmt.Errorf("--geneve-addr %q: the host must be an IPv4 address (GENEVE arrives over IPv4) or empty for all", addr)
		}
	}
	// Port 0 stays allowed on loopback, where tests take a free port.
	if n == 0 && !a.IsLoopback() {
		return fmt.Errorf("--geneve-addr %q: port 0 would be a random port, which the GWLB does not send to", addr)
	}
	return nil
}
