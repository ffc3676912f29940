package policy

import (
	"net/netip"
	"testing"
)

func TestOnlyNameAllows(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`
policy:
  default: deny
  rules:
    - name: web
      domains: [allowed.example, "*.corp.example"]
      action: splice
    - name: ssh
      dest_cidrs: ["192.0.2.0/24"]
      ports: [22]
      action: allow
    - name: tls-out
      dest_cidrs: ["198.51.100.0/24"]
      protocols: [tls]
      action: splice
    - name: internal
      dest_cidrs: ["10.0.0.0/8"]
      action: deny
`))
	if err != nil {
		t.Fatal(err)
	}
	open, _ := Parse("o.yaml", []byte("policy:\n  default: allow\n  rules:\n    - {name: web, domains: [bad.example], action: deny}\n"))
	tests := []struct {
		pol  *Policy
		dest string
		want bool
	}{
		{p, "203.0.113.1:443", true},     // default deny: only web can open it
		{p, "10.1.2.3:6379", true},       // internal denies it: only web, before it, can open it
		{p, "192.0.2.7:22", false},       // ssh allows it on its addresses
		{p, "192.0.2.7:2222", true},      // not ssh's port
		{p, "198.51.100.9:443", false},   // TLS without a name is spliced
		{open, "203.0.113.1:443", false}, // allowed by default
		{nil, "203.0.113.1:443", true},
	}
	domains := []string{"", "allowed.example", "a.corp.example", "corp.example", "other.example"}
	for _, tt := range tests {
		f := Subject{Dest: netip.MustParseAddrPort(tt.dest), Client: netip.MustParseAddr("192.0.2.200")}
		if got := tt.pol.OnlyNameAllows(f); got != tt.want {
			t.Errorf("%s: OnlyNameAllows = %v, want %v", tt.dest, got, tt.want)
		}
		if !tt.want {
			continue
		}
		// What it promises: whatever the flow is, it is denied unless a
		// rule with domains decides it.
		for _, proto := range []string{ProtoTLS, ProtoHTTP, ProtoTCP} {
			for _, dom := range domains {
				f.Protocol, f.Domain = proto, dom
				if d := tt.pol.Decide(f); d.Action != Deny && !d.ByName {
					t.Errorf("%s %s %q: %+v, allowed without a name", tt.dest, proto, dom, d)
				}
			}
		}
	}
}
