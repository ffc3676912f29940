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

// TestDecideEarlyProtocols: DecideEarly answers only when no byte the
// client sends could change the outcome. A rule for protocols [tcp] can
// match a TCP flow, so under default deny a flow it may allow (SSH, a
// database) must not be refused at its SYN by the default; and a deny rule
// for tls alone must not refuse early a flow not yet known to be TLS (plain
// HTTP, other TCP), nor name itself in that flow's record.
func TestDecideEarlyProtocols(t *testing.T) {
	ssh := mustParse(t, `
policy:
  default: deny
  rules:
    - name: ssh
      protocols: [tcp]
      ports: [22]
      action: allow
`)
	if d, ok := ssh.DecideEarly(Subject{Dest: ap("192.0.2.1:22")}); ok {
		t.Errorf("a flow a tcp-only allow rule may let through was denied early: %+v", d)
	}
	if d, ok := ssh.DecideEarly(Subject{Dest: ap("192.0.2.1:23")}); !ok || d.Rule != DefaultRule {
		t.Errorf("a flow no rule may let through: %+v %v, want denied early by the default", d, ok)
	}
	tlsDeny := mustParse(t, `
policy:
  default: allow
  rules:
    - name: no-tls-here
      protocols: [tls]
      dest_cidrs: ["192.0.2.0/24"]
      action: deny
`)
	if d, ok := tlsDeny.DecideEarly(Subject{Dest: ap("192.0.2.1:443")}); ok {
		t.Errorf("denied early by a rule for tls alone, before the flow was known to be tls: %+v", d)
	}
	for _, proto := range []string{ProtoHTTP, ProtoTCP} {
		if d := tlsDeny.Decide(Subject{Protocol: proto, Dest: ap("192.0.2.1:443")}); d.Action != Allow {
			t.Errorf("%s flow under a tls-only deny: %+v, want allow", proto, d)
		}
	}
}
