package appliance

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// resolveVPCResolver settles o.vpcCIDRs, the VPC's CIDR blocks, whose
// base + 2 the proxy refuses (proxy.Config.VPCCIDRs): the Amazon DNS
// server answers there with the appliance VPC's private hosted zones and
// Resolver rules, and a client must not query it as the appliance. Without
// --gwlb-cidrs they are the senders' default, read already. With it they
// are read for this alone, and only on EC2's hardware (onEC2) or with
// AWS_EC2_METADATA_SERVICE_ENDPOINT set: off EC2 there is no such server,
// and asking would cost the start up to metadataTimeout. A read that fails
// is warned about, not fatal: it never was without the VPC default.
func resolveVPCResolver(o *Options) {
	if o.gwlbCIDRsFromVPC {
		o.vpcCIDRs = o.GWLBCIDRs
		return
	}
	if !onEC2(o.sysfs) && os.Getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT") == "" {
		slog.Info("not on EC2 (sysfs names no Amazon hardware): the VPC's CIDR blocks are not read, so no VPC DNS server is refused; " +
			"on an EC2 instance, set AWS_EC2_METADATA_SERVICE_ENDPOINT=http://169.254.169.254 to have them read")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), metadataTimeout)
	defer cancel()
	cidrs, err := vpcCIDRs(ctx, o.MetadataEndpoint)
	if err != nil {
		slog.Warn("the VPC's CIDR blocks could not be read from instance metadata within "+metadataTimeout.String()+
			": the Amazon DNS server at the VPC's base + 2 (10.0.0.2 for 10.0.0.0/16) is not refused, so clients can query it "+
			"as the appliance (its VPC's private hosted zones and Resolver rules). Refuse it in the policy, with a first rule "+
			`{name: vpc-dns, dest_cidrs: ["<VPC base + 2>/32"], action: deny}`, "err", err)
		return
	}
	o.vpcCIDRs = cidrs
	slog.Info("the VPC's DNS server, at base + 2 of its CIDR blocks, is refused to clients", "vpc_cidrs", cidrs)
}

// onEC2 reports whether sysfs under root ("": /sys) names EC2's hardware:
// a Nitro instance's DMI vendor, a Xen one's hypervisor UUID or BIOS
// version. It asks no server, so it costs nothing off EC2.
func onEC2(root string) bool {
	if root == "" {
		root = "/sys"
	}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(root, name)) // absent: not this kind of instance
		return strings.TrimSpace(string(b))
	}
	for _, f := range []string{"sys_vendor", "board_vendor", "bios_vendor"} {
		if read("devices/virtual/dmi/id/"+f) == "Amazon EC2" {
			return true
		}
	}
	if strings.Contains(strings.ToLower(read("devices/virtual/dmi/id/bios_version")), "amazon") {
		return true
	}
	uuid := read("hypervisor/uuid")
	return len(uuid) >= 3 && strings.EqualFold(uuid[:3], "ec2")
}
