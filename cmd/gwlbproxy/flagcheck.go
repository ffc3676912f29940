package main

import (
	"flag"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/internal/appliance"
	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
)

// minIdleTimeout is the least --idle-timeout: a UDP or ICMP flow must live
// long enough for its answer to come back; below a second every answer
// from a destination further than a few milliseconds away races the flow's
// expiry, and the flow table churns.
const minIdleTimeout = time.Second

// checkFlagValues refuses the flag values that the packages below would
// otherwise replace with their defaults without a word (a zero or negative
// size or interval means "the default" to them, as set by code, but given
// on the command line it is a mistake), or that could never work; then
// the appliance's own ranges (Options.Validate, which New checks again),
// so that every bad value stops the process before anything starts.
func checkFlagValues(o *appliance.Options) error {
	if o.IdleTimeout < minIdleTimeout {
		return fmt.Errorf("--idle-timeout %s: must be at least %s", o.IdleTimeout, minIdleTimeout)
	}
	if k := o.AccessLogRotation.Keep; k < 1 || k > 1000 {
		return fmt.Errorf("--access-log-keep %d: must be 1 to 1000 (a logrotate stanza naming the file turns the appliance's rotation off)", k)
	}
	if a := o.AccessLogRotation.MaxAge; a != 0 && a < time.Minute {
		return fmt.Errorf("--access-log-max-age %s: must be 0 (never) or at least 1m", a)
	}
	c := o.Capture
	if c.RotateBytes < capture.MinRotateBytes {
		return fmt.Errorf("--pcap-rotate-bytes %d: must be at least %d", c.RotateBytes, capture.MinRotateBytes)
	}
	if c.MaxBytes < c.RotateBytes {
		return fmt.Errorf("--pcap-max-bytes %d: must be at least --pcap-rotate-bytes (%d)", c.MaxBytes, c.RotateBytes)
	}
	if c.RotateAge < time.Second {
		return fmt.Errorf("--pcap-rotate-age %s: must be at least 1s", c.RotateAge)
	}
	if err := checkTAPName(c.MirrorTAP); err != nil {
		return err
	}
	if cw := o.CloudWatch; cw.FlushInterval <= 0 {
		return fmt.Errorf("--cloudwatch-flush %s: must be positive", cw.FlushInterval)
	}
	if cw := o.CloudWatch; cw.BufferBytes < cwlogs.MinBufferBytes {
		return fmt.Errorf("--cloudwatch-buffer %d: must be at least %d", cw.BufferBytes, cwlogs.MinBufferBytes)
	}
	if err := checkEndpointURL("--cloudwatch-endpoint", o.CloudWatch.Endpoint); err != nil {
		return err
	}
	if err := checkEndpointURL("--ca-secret-endpoint", o.CASecret.Endpoint); err != nil {
		return err
	}
	return o.Validate()
}

// outputTuning lists, for each output a flag turns on (off when that flag
// is absent or empty), the flags that only tune it.
var outputTuning = []struct {
	on, off string   // the flag turning the output on; what happens without it
	tuning  []string // in --help's order
}{
	{"cloudwatch-group", "no record is shipped to CloudWatch Logs", []string{
		"cloudwatch-stream", "cloudwatch-region", "cloudwatch-endpoint",
		"cloudwatch-flush", "cloudwatch-buffer", "cloudwatch-retention-days"}},
	{"pcap-dir", "no packet is written to pcap files", []string{
		"pcap-rotate-bytes", "pcap-rotate-age", "pcap-max-bytes"}},
}

// checkOutputTuning refuses a flag that tunes an output given while the
// output is off: it did nothing, without a word, so the operator who set
// --cloudwatch-stream believed the records shipped while nothing left the
// host, as --ca-secret-region without --ca-secret and --pcap-filter
// without --pcap-dir are refused for. The output's flag given empty is
// refused with them: it is rather `--cloudwatch-group "$GROUP"` with the
// variable unset (as `--config ""` is refused for) than a wish to ship
// nothing while naming how. Given empty alone, it keeps meaning off.
func checkOutputTuning(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, out := range outputTuning {
		if fs.Lookup(out.on).Value.String() != "" {
			continue
		}
		var set []string
		for _, name := range out.tuning {
			if given[name] {
				set = append(set, "--"+name)
			}
		}
		if len(set) == 0 {
			continue
		}
		verb, subject := "needs", "the flag"
		if len(set) > 1 {
			verb, subject = "need", "these flags"
		}
		how := ", not given"
		if given[out.on] {
			how = fmt.Sprintf(`, given empty (as --%s "$VAR" with the variable unset)`, out.on)
		}
		return fmt.Errorf("%s %s --%s%s: without it %s, and %s would do nothing", strings.Join(set, ", "), verb, out.on, how, out.off, subject)
	}
	return nil
}

// checkTAPName refuses a --mirror-tap the kernel takes for no interface
// name (dev_valid_name: "." and "..", or "/", ":", a NUL or white space in
// it): such a name passed and failed only at start, with a hint about
// CAP_NET_ADMIN that misleads an operator running as root. The length is
// capture's check.
func checkTAPName(name string) error {
	if name == "." || name == ".." {
		return fmt.Errorf("--mirror-tap %q: not a device name", name)
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case '/', ':', 0, ' ', '\t', '\n', '\v', '\f', '\r', 0xa0: // 0xa0: the kernel's isspace
			return fmt.Errorf("--mirror-tap %q: %q is not allowed in a device name", name, c)
		}
	}
	return nil
}

// parseGWLBCIDRs parses --gwlb-cidrs' comma-separated CIDRs. An
// IPv4-mapped prefix (::ffff:10.0.200.0/124) becomes the IPv4 prefix it
// names, as in the policy (parseCIDR): the sender check and the refusal of
// clients' traffic to the senders both unmap the address they look at, so
// kept mapped it would match no sender, every GWLB datagram would be
// dropped as unknown_sender while the health check said serving, and the
// senders' GENEVE and admin ports would go unrefused.
func parseGWLBCIDRs(v string) ([]netip.Prefix, error) {
	var ps []netip.Prefix
	for _, c := range strings.Split(v, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("%q: want CIDRs, or any: %w", c, err)
		}
		// As the policy parser: 10.0.0.1/8 is a typo for a /32 as
		// often as for 10.0.0.0/8, and masking it would guess.
		if p != p.Masked() {
			return nil, fmt.Errorf("%q: host bits set (did you mean %q?)", c, p.Masked().String())
		}
		// Masked, a mapped address has a prefix of /96 or longer: a
		// shorter one (::ffff:0:0/95) has host bits set, refused above.
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// checkEndpointURL refuses an AWS endpoint URL (--cloudwatch-endpoint,
// --ca-secret-endpoint) that is not an http or https URL with a host: the
// SDK takes any string and fails only when it sends, so a typo (no scheme,
// "::bad") started a healthy appliance whose every CloudWatch batch failed,
// seen only in /stats (CloudWatch trouble never fails the health check),
// or sent the CA lookup to the wrong place. Empty: the region's endpoint.
func checkEndpointURL(flagName, v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("%s %q: want an http or https URL: %w", flagName, v, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%s %q: want an http or https URL, such as https://logs.us-east-1.amazonaws.com", flagName, v)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%s %q: the URL has no host", flagName, v)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%s %q: port %s: want 1-65535", flagName, v, p)
		}
	}
	return nil
}
