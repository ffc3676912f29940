package policy

import (
	"net/netip"
	"testing"
)

func TestDecideEarly(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`
policy:
  default: allow
  rules:
    - name: udp-only
      protocols: [udp]
      action: deny
    - name: block-net
      dest_cidrs: ["203.0.113.0/24"]
      action: deny
    - name: web
      domains: ["*.example.com"]
      action: deny
    - name: late-net
      dest_cidrs: ["198.51.100.0/24"]
      action: deny
`))
	if err != nil {
		t.Fatal(err)
	}
	flow := func(dst string) Subject { return Subject{Dest: netip.MustParseAddrPort(dst)} }
	if d, ok := p.DecideEarly(flow("203.0.113.9:443")); !ok || d.Action != Deny || d.Rule != "block-net" {
		t.Errorf("address-only deny: %+v %v", d, ok)
	}
	// A domain rule comes first: the SNI could still decide, so no early answer.
	if _, ok := p.DecideEarly(flow("198.51.100.7:443")); ok {
		t.Error("decided early although a domain rule precedes")
	}
	if _, ok := p.DecideEarly(flow("192.0.2.1:80")); ok {
		t.Error("decided early for a flow that is allowed by default")
	}
	deny, _ := Parse("d.yaml", []byte("policy:\n  default: deny\n"))
	if d, ok := deny.DecideEarly(flow("192.0.2.1:80")); !ok || d.Rule != DefaultRule {
		t.Errorf("default deny: %+v %v", d, ok)
	}
	// Whatever DecideEarly is sure of, Decide must agree with for every protocol.
	for _, dst := range []string{"203.0.113.9:443", "192.0.2.1:80"} {
		for _, pol := range []*Policy{p, deny} {
			d, ok := pol.DecideEarly(flow(dst))
			if !ok {
				continue
			}
			for _, proto := range []string{ProtoTLS, ProtoHTTP, ProtoTCP} {
				for _, dom := range []string{"", "a.example.com"} {
					f := flow(dst)
					f.Protocol, f.Domain = proto, dom
					if full := pol.Decide(f); full.Action != d.Action || full.Rule != d.Rule {
						t.Errorf("%s %s %q: early %+v, full %+v", dst, proto, dom, d, full)
					}
				}
			}
		}
	}
}
