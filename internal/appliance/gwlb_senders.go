package appliance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// metadataTimeout bounds reading the VPC's CIDR blocks from instance
// metadata: on EC2 it answers in milliseconds; off EC2 start-up fails
// within it, asking for --gwlb-cidrs. With --gwlb-cidrs, where they are
// read for the VPC's DNS server alone (resolveVPCResolver), a start that
// gets no answer within it goes on with a warning.
const metadataTimeout = 2 * time.Second

// resolveGWLBSenders settles whom GENEVE is accepted from. Forged GENEVE
// could claim any endpoint, client and flow, and use the appliance as an
// open proxy with the instance's identity, so there is always a list
// unless --gwlb-cidrs any says otherwise: --gwlb-cidrs, else the VPC's CIDR
// blocks (the GWLB is in the appliance's VPC), read from instance metadata.
// Off EC2 there is no default, and start-up fails naming the flag.
func resolveGWLBSenders(o *Options) error {
	if o.AnyGWLBSender {
		o.GWLBCIDRs = nil
		slog.Warn("--gwlb-cidrs any: GENEVE is accepted from every sender; whoever reaches the GENEVE port can " +
			"forge GWLB endpoints and clients and use the appliance as an open proxy. Pass the GWLB's subnets instead")
		return nil
	}
	if len(o.GWLBCIDRs) > 0 {
		for _, p := range o.GWLBCIDRs {
			if p.Bits() == 0 { // as open as "any", without saying so
				slog.Warn("--gwlb-cidrs "+p.String()+": GENEVE is accepted from every sender of its address family; whoever reaches the GENEVE port can "+
					"forge GWLB endpoints and clients and use the appliance as an open proxy. Pass the GWLB's subnets instead", "gwlb_cidrs", o.GWLBCIDRs)
			}
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), metadataTimeout)
	defer cancel()
	cidrs, err := vpcCIDRs(ctx, o.MetadataEndpoint)
	if err != nil {
		return fmt.Errorf("--gwlb-cidrs is required off EC2: GENEVE is accepted only from the GWLB's subnets, "+
			"and the VPC's CIDR blocks it defaults to could not be read from instance metadata within %s (%v). "+
			"Pass the GWLB's subnets, or --gwlb-cidrs any to accept every sender (unsafe)", metadataTimeout, err)
	}
	o.GWLBCIDRs, o.gwlbCIDRsFromVPC = cidrs, true
	// A warning, not news: any host of the VPC that the security group
	// lets reach the GENEVE port can forge what only the GWLB should send.
	// The CloudFormation template passes the GWLB's subnets; a hand-made
	// deployment that leaves the flag out gets this.
	slog.Warn("--gwlb-cidrs not set: GENEVE is accepted from the whole VPC (its CIDR blocks, from instance metadata). "+
		"Any host of the VPC that reaches the GENEVE port can forge GWLB endpoints and clients (getting around client_cidrs "+
		"and endpoints rules, writing records in another client's name) and take over a live flow's replies; "+
		"clients' UDP to the GENEVE port is refused throughout the VPC. "+
		"Pass the GWLB's subnets", "gwlb_cidrs", cidrs)
	return nil
}

// vpcCIDRs returns the IPv4 and IPv6 CIDR blocks of the VPC of the
// instance's primary network interface, read through IMDSv2 from endpoint
// (empty: the SDK's default).
func vpcCIDRs(ctx context.Context, endpoint string) ([]netip.Prefix, error) {
	client := imds.New(imds.Options{
		Endpoint:       endpoint,
		EnableFallback: aws.FalseTernary, // IMDSv2 only: a session token first
		// Two quick attempts: IMDS answers in milliseconds when present.
		Retryer: retry.AddWithMaxAttempts(retry.NewStandard(), 2),
	})
	mac, err := metadata(ctx, client, "mac")
	if err != nil {
		return nil, err
	}
	if mac == "" || strings.ContainsAny(mac, "/?#\n") {
		return nil, fmt.Errorf("instance metadata: unexpected MAC address %q", mac)
	}
	base := "network/interfaces/macs/" + mac + "/"
	v4, err := metadata(ctx, client, base+"vpc-ipv4-cidr-blocks")
	if err != nil {
		return nil, err
	}
	v6, err := metadata(ctx, client, base+"vpc-ipv6-cidr-blocks")
	if err != nil && !notFound(err) { // a VPC without IPv6 has no such entry
		return nil, err
	}
	var cidrs []netip.Prefix
	sc := bufio.NewScanner(strings.NewReader(v4 + "\n" + v6))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		p, err := netip.ParsePrefix(line)
		if err != nil {
			return nil, fmt.Errorf("instance metadata: VPC CIDR block %q: %w", line, err)
		}
		cidrs = append(cidrs, p.Masked())
	}
	if len(cidrs) == 0 {
		return nil, errors.New("instance metadata names no VPC CIDR block")
	}
	return cidrs, nil
}

// metadata returns the instance metadata entry at path, trimmed.
func metadata(ctx context.Context, client *imds.Client, path string) (string, error) {
	out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", err
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 64<<10))
	if err != nil {
		return "", fmt.Errorf("reading instance metadata %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// notFound reports whether err is an HTTP 404 from instance metadata.
func notFound(err error) bool {
	var re interface{ HTTPStatusCode() int }
	return errors.As(err, &re) && re.HTTPStatusCode() == 404
}

// genevePorts returns the UDP ports the proxy refuses at GENEVE senders'
// addresses: the GWLB's (6081, where its nodes take GENEVE from targets)
// and the one GENEVE is taken on here (--geneve-addr), which sibling
// appliances of the same configuration share.
func genevePorts(addr string) []uint16 {
	ports := []uint16{netstack.GenevePort}
	if p := listenPort("udp", addr); p != 0 && !slices.Contains(ports, p) {
		ports = append(ports, p)
	}
	return ports
}

// listenPort returns the port of a listening address (":80",
// "10.0.0.5:http"), or 0 when it has none or it cannot be read (the
// listener then fails to start anyway).
func listenPort(network, addr string) uint16 {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := net.LookupPort(network, port)
	if err != nil || n <= 0 || n > 65535 {
		return 0
	}
	return uint16(n)
}

// senderAdminPort is the port clients' TCP is refused on at the GENEVE
// senders' addresses (proxy.Config.AdminPort): the admin listener's, but
// only when the senders were named with --gwlb-cidrs and none is a /0.
// The VPC default, or a /0, holds every host clients may reach, and the
// admin port (80 by default) is every web server's: refusing it there
// would refuse plain HTTP to the whole VPC, or the whole Internet. The
// GENEVE port is refused in every case: nothing but GENEVE is served on it.
func senderAdminPort(o *Options) uint16 {
	if o.gwlbCIDRsFromVPC || o.AnyGWLBSender {
		return 0
	}
	for _, p := range o.GWLBCIDRs {
		if p.Bits() == 0 {
			return 0
		}
	}
	return listenPort("tcp", o.AdminAddr)
}

// senderPrefixes returns the hosts whose GENEVE port clients may not
// reach (proxy.Config.SenderPrefixes): --gwlb-cidrs, or with "any" every
// address, as configuration.md says of 0.0.0.0/0. "any" once left the
// accepted senders' list empty, and the refusal used to follow it: a
// client could send UDP to port 6081 of a sibling appliance or a GWLB
// node from this appliance's address, which they take for GENEVE.
func senderPrefixes(o *Options) []netip.Prefix {
	if o.AnyGWLBSender {
		return []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
	}
	return o.GWLBCIDRs
}

// geneveSenders returns the senders GENEVE is accepted from
// (netstack.Config.Senders), the same hosts as senderPrefixes. The
// netstack reads a nil list as "every sender", so an empty list must never
// reach it: "any" is spelt out as every address of both families, and
// options that leave no sender (a bug in resolving them, say) stop the
// start rather than open the GENEVE port to everyone.
func geneveSenders(o *Options) ([]netip.Prefix, error) {
	s := senderPrefixes(o)
	if len(s) == 0 {
		return nil, errors.New("no GENEVE sender to accept: pass the GWLB's subnets in --gwlb-cidrs, or any to accept every sender (unsafe)")
	}
	return s, nil
}
