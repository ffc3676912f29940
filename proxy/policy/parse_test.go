package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rulesDoc puts rule lines under a policy header; the first rule line is
// line 4 of the document.
func rulesDoc(lines ...string) string {
	return "# test\npolicy:\n  rules:\n" + strings.Join(lines, "\n") + "\n"
}

// domain253 is a name of the longest length DNS allows (without the
// trailing dot), domain254 one byte longer.
var (
	domain253 = strings.Repeat("x.", 126) + "x"
	domain254 = strings.Repeat("x.", 126) + "xy"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
		line            int
	}{
		{"bad CIDR", rulesDoc(
			"    - name: inspect-corp",
			"      dest_cidrs:",
			"        - 10.0.0.0/8",
			"        - 10.0.0.0/33",
			"      action: bump"),
			`policy.yaml:7: rule "inspect-corp": dest_cidrs: invalid CIDR "10.0.0.0/33"`, 7},
		{"CIDR with host bits", rulesDoc(
			"    - name: c",
			"      client_cidrs: [10.0.0.1/8]",
			"      action: deny"),
			`policy.yaml:5: rule "c": client_cidrs: invalid CIDR "10.0.0.1/8": host bits set (did you mean "10.0.0.0/8"?)`, 5},
		{"CIDR with zone", rulesDoc("    - {name: z, dest_cidrs: [\"fe80::1%eth0\"], action: deny}"),
			`policy.yaml:4: rule "z": dest_cidrs: invalid CIDR "fe80::1%eth0"`, 4},
		{"unknown action", rulesDoc(
			"    - name: a",
			"      action: block"),
			`policy.yaml:5: rule "a": unknown action "block" (want allow, deny, bump or splice)`, 5},
		{"unknown key (typo)", rulesDoc(
			"    - name: typo",
			"      domain: [bad.example]",
			"      action: deny"),
			`policy.yaml:5: rule "typo": rule: unknown key "domain" (want name, domains, dest_cidrs, ports, protocols, client_cidrs, endpoints, action, allow_unverified_upstream)`, 5},
		{"unknown key, name later", rulesDoc(
			"    - action: deny",
			"      prots: [tcp]",
			"      name: later"),
			`policy.yaml:5: rule "later": rule: unknown key "prots" (want name, domains, dest_cidrs, ports, protocols, client_cidrs, endpoints, action, allow_unverified_upstream)`, 5},
		{"bad port range: reversed", rulesDoc(
			"    - name: p",
			`      ports: [443, "8100-8000"]`,
			"      action: allow"),
			`policy.yaml:5: rule "p": ports: invalid port range "8100-8000": start above end`, 5},
		{"bad port range: junk", rulesDoc("    - {name: p, ports: [\"80-http\"], action: allow}"),
			`policy.yaml:4: rule "p": ports: invalid port range "80-http": want a port (443) or a range ("8000-8100")`, 4},
		{"port 0", rulesDoc("    - {name: p, ports: [0], action: allow}"),
			`policy.yaml:4: rule "p": ports: port 0 out of range 1-65535`, 4},
		{"port too big", rulesDoc("    - {name: p, ports: [\"1-65536\"], action: allow}"),
			`policy.yaml:4: rule "p": ports: invalid port range "1-65536": want a port (443) or a range ("8000-8100")`, 4},
		{"port as float", rulesDoc("    - {name: p, ports: [4.5], action: allow}"),
			`policy.yaml:4: rule "p": ports: "4.5": want a port (443) or a range ("8000-8100")`, 4},
		{"empty name", rulesDoc(
			"    - name: \"\"",
			"      action: deny"),
			`policy.yaml:4: rule #1: name: empty`, 4},
		{"missing name", rulesDoc(
			"    - name: first",
			"      action: deny",
			"    - action: deny"),
			`policy.yaml:6: rule #2: no name`, 6},
		{"reserved name", rulesDoc("    - {name: default, action: deny}"),
			`policy.yaml:4: rule "default": name: "default" is reserved for flows no rule matches`, 4},
		{"missing action", rulesDoc("    - name: noact", "      ports: [80]"),
			`policy.yaml:4: rule "noact": no action (want allow, deny, bump or splice)`, 4},
		{"duplicate rule names", rulesDoc(
			"    - name: same",
			"      action: deny",
			"    - name: other",
			"      action: deny",
			"    - name: same",
			"      action: allow"),
			`policy.yaml:8: rule "same": duplicate rule name (first at line 4)`, 8},
		{"duplicate key", rulesDoc(
			"    - name: dup",
			"      action: allow",
			"      action: deny"),
			`policy.yaml:6: rule "dup": rule: duplicate key "action"`, 6},
		{"empty list", rulesDoc("    - {name: e, domains: [], action: deny}"),
			`policy.yaml:4: rule "e": domains: empty list (leave the key out to match anything)`, 4},
		{"null list", rulesDoc("    - name: e", "      dest_cidrs:", "      action: deny"),
			`policy.yaml:5: rule "e": dest_cidrs: empty list (leave the key out to match anything)`, 5},
		{"scalar for list", rulesDoc("    - {name: s, domains: bad.example, action: deny}"),
			`policy.yaml:4: rule "s": domains: want a list, e.g. [a, b]`, 4},
		{"lone star", rulesDoc("    - {name: d, domains: [\"*\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "*": a lone * would match every name; leave domains out instead`, 4},
		{"inner star", rulesDoc("    - {name: d, domains: [\"a.*.example\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "a.*.example": * is only allowed as a whole first label (*.example.com)`, 4},
		{"url as domain", rulesDoc("    - {name: d, domains: [\"https://x.example/\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "https://x.example/": ':' is not allowed in a name (no schemes, ports or paths)`, 4},
		{"unicode domain", rulesDoc("    - {name: d, domains: [\"bücher.example\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "bücher.example": not ASCII: write the xn-- (punycode) form`, 4},
		{"empty label", rulesDoc("    - {name: d, domains: [\"a..example\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "a..example": empty label`, 4},
		// Decide drops one trailing dot of a name, so a pattern that keeps
		// a second could never be matched: a deny rule denying nothing.
		{"doubled trailing dot", rulesDoc("    - {name: d, domains: [\"bad.example..\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "bad.example..": empty label`, 4},
		{"wildcard with doubled trailing dot", rulesDoc("    - {name: d, domains: [\"*.bad.example..\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "*.bad.example..": empty label`, 4},
		// A name longer than DNS allows is no host's: a rule holding one
		// is a mistake, caught at load rather than never matching.
		{"domain over 253 bytes", rulesDoc("    - {name: d, domains: [\"" + domain254 + "\"], action: deny}"),
			`policy.yaml:4: rule "d": invalid domain "` + domain254 + `": longer than 253 bytes`, 4},
		// A YAML null is no name: "null" or "~" unquoted must not become
		// the name "null", nor an entry that matches nothing.
		{"null domain", rulesDoc("    - {name: d, domains: [null], action: deny}"),
			`policy.yaml:4: rule "d": domains: entries must be single values`, 4},
		{"tilde domain", rulesDoc("    - {name: d, domains: [a.example, ~], action: deny}"),
			`policy.yaml:4: rule "d": domains: entries must be single values`, 4},
		{"unknown protocol", rulesDoc("    - {name: pr, protocols: [tls, htp], action: deny}"),
			`policy.yaml:4: rule "pr": unknown protocol "htp" (want tls, http, tcp, quic, udp or icmp)`, 4},
		{"ping is not a protocol name", rulesDoc("    - {name: pr, protocols: [ping], action: deny}"),
			`policy.yaml:4: rule "pr": unknown protocol "ping" (want tls, http, tcp, quic, udp or icmp)`, 4},
		{"icmpv6 is spelled icmp", rulesDoc("    - {name: pr, protocols: [icmpv6], action: deny}"),
			`policy.yaml:4: rule "pr": unknown protocol "icmpv6" (want tls, http, tcp, quic, udp or icmp)`, 4},
		{"icmp alone with ports", rulesDoc(
			"    - name: ping",
			"      protocols: [icmp]",
			"      ports: [7]",
			"      action: deny"),
			`policy.yaml:6: rule "ping": ports: ICMP has no ports, so a rule for protocol icmp alone with ports would never match`, 6},
		{"icmp alone with domains", rulesDoc(
			"    - name: ping",
			"      domains: [x.example]",
			"      protocols: [ICMP]",
			"      action: deny"),
			`policy.yaml:5: rule "ping": domains: icmp flows have no name, so a rule for protocols icmp alone with domains would never match (names come from TLS, HTTP and QUIC: add those protocols, or leave domains out)`, 5},
		{"tcp alone with domains", rulesDoc("    - {name: raw, domains: [x.com], protocols: [tcp], action: deny}"),
			`policy.yaml:4: rule "raw": domains: tcp flows have no name, so a rule for protocols tcp alone with domains would never match (names come from TLS, HTTP and QUIC: add those protocols, or leave domains out)`, 4},
		{"icmp and tcp with domains", rulesDoc(
			"    - name: both",
			"      protocols: [icmp, tcp]",
			"      domains: [x.com]",
			"      action: deny"),
			`policy.yaml:6: rule "both": domains: tcp and icmp flows have no name, so a rule for protocols tcp, icmp alone with domains would never match (names come from TLS, HTTP and QUIC: add those protocols, or leave domains out)`, 6},
		{"second document", "policy:\n  default: deny\n---\npolicy:\n  default: allow\n",
			`policy.yaml:3: a second YAML document (after ---): the policy file must be one document`, 3},
		{"second document, policy in it", "# header only\nother: 1\n---\npolicy: {default: deny}\n",
			`policy.yaml:3: a second YAML document (after ---): the policy file must be one document`, 3},
		{"bad second document", "policy: {}\n---\npolicy: [\n",
			`policy.yaml:3: did not find expected node content`, 3},
		{"content after empty documents", "policy: {}\n---\n# nothing\n---\nother: 1\n",
			`policy.yaml:4: a second YAML document (after ---): the policy file must be one document`, 4},
		{"explicit null second document", "policy: {}\n---\n~\n",
			`policy.yaml:2: a second YAML document (after ---): the policy file must be one document`, 2},
		{"bad endpoint", rulesDoc("    - {name: ep, endpoints: [\"vpc-123\"], action: deny}"),
			`policy.yaml:4: rule "ep": invalid endpoint "vpc-123" (want a GWLB endpoint ID: vpce- and 17 hex digits, the first 0)`, 4},
		// Flows are named vpce-%017x: any other length parses into a rule
		// that never matches, a deny rule denying nothing.
		{"endpoint with a digit dropped", rulesDoc("    - {name: ep, endpoints: [vpce-123456789abcdef0], action: deny}"),
			`policy.yaml:4: rule "ep": invalid endpoint "vpce-123456789abcdef0" (want a GWLB endpoint ID: vpce- and 17 hex digits, the first 0)`, 4},
		{"endpoint too short", rulesDoc("    - {name: ep, endpoints: [vpce-1], action: deny}"),
			`policy.yaml:4: rule "ep": invalid endpoint "vpce-1" (want a GWLB endpoint ID: vpce- and 17 hex digits, the first 0)`, 4},
		{"endpoint over 64 bits", rulesDoc("    - {name: ep, endpoints: [vpce-10123456789abcdef], action: deny}"),
			`policy.yaml:4: rule "ep": invalid endpoint "vpce-10123456789abcdef" (want a GWLB endpoint ID: vpce- and 17 hex digits, the first 0)`, 4},
		// YAML reads 0443 as octal (port 291) and takes other spellings
		// of numbers: only plain decimal is a port.
		{"octal port", rulesDoc("    - {name: p, ports: [0443], action: allow}"),
			`policy.yaml:4: rule "p": ports: port 0443: want a port (443) or a range ("8000-8100")`, 4},
		{"hex port", rulesDoc("    - {name: p, ports: [0x1bb], action: allow}"),
			`policy.yaml:4: rule "p": ports: port 0x1bb: want a port (443) or a range ("8000-8100")`, 4},
		{"port with a sign", rulesDoc("    - {name: p, ports: [+443], action: allow}"),
			`policy.yaml:4: rule "p": ports: port +443: want a port (443) or a range ("8000-8100")`, 4},
		{"port with an underscore", rulesDoc("    - {name: p, ports: [1_000], action: allow}"),
			`policy.yaml:4: rule "p": ports: port 1_000: want a port (443) or a range ("8000-8100")`, 4},
		// A Host that is an address matches no domain rule (Decide).
		{"an IPv4 address as a domain", rulesDoc("    - {name: ip, domains: [\"192.0.2.1\"], action: deny}"),
			`policy.yaml:4: rule "ip": invalid domain "192.0.2.1": an IP address: match addresses with dest_cidrs`, 4},
		{"reserved name in another case", rulesDoc("    - {name: Default, action: allow}"),
			`policy.yaml:4: rule "Default": name: "Default" is reserved for flows no rule matches`, 4},
		{"the trust page's name", rulesDoc("    - {name: trust-page, action: allow}"),
			`policy.yaml:4: rule "trust-page": name: "trust-page" is reserved for the appliance's CA page`, 4},
		{"duplicate rule names but for case", rulesDoc(
			"    - name: web",
			"      action: deny",
			"    - name: Web",
			"      action: allow"),
			`policy.yaml:6: rule "Web": duplicate rule name (first at line 4)`, 6},
		{"unverified on splice", rulesDoc("    - name: u", "      action: splice", "      allow_unverified_upstream: true"),
			`policy.yaml:4: rule "u": allow_unverified_upstream only applies to action bump, not splice`, 4},
		{"unverified not bool", rulesDoc("    - {name: u, action: bump, allow_unverified_upstream: \"yes\"}"),
			`policy.yaml:4: rule "u": allow_unverified_upstream: want true or false`, 4},
		{"rule not a mapping", rulesDoc("    - just-a-string"),
			`policy.yaml:4: rule #1: a rule must be a mapping`, 4},
		{"merge key", "base: &b {action: deny}\npolicy:\n  rules:\n    - <<: *b\n      name: m\n",
			`policy.yaml:4: rule "m": rule: merge keys (<<) are not supported`, 4},
		{"unknown policy key", "policy:\n  defualt: deny\n",
			`policy.yaml:2: policy: unknown key "defualt" (want mode, default, destination_check, ech, rules)`, 2},
		{"unknown mode", "policy:\n  mode: monitor\n",
			`policy.yaml:2: mode: unknown mode "monitor" (want enforce or audit)`, 2},
		{"unknown default", "policy:\n  mode: audit\n  default: block\n",
			`policy.yaml:3: default: unknown action "block" (want allow, deny, bump or splice)`, 3},
		{"rules not a list", "policy:\n  rules: {name: x}\n",
			`policy.yaml:2: rules: want a list of rules`, 2},
		{"policy not a mapping", "policy: [1, 2]\n",
			`policy.yaml:1: policy must be a mapping`, 1},
		{"no policy section", "listen: x\npolcy: {}\n",
			`policy.yaml:1: no "policy" section`, 1},
		// A policy key one indent too far left is a key of the document,
		// which would be ignored: the file would load without its rules.
		{"rules at the top level", "policy:\n  default: allow\nrules:\n  - name: block-metadata\n    dest_cidrs: [169.254.169.254]\n    action: deny\n",
			`policy.yaml:3: "rules" is a key of the policy section, not of the document: did you mean to indent it under policy:?`, 3},
		{"default at the top level", "policy:\n  rules: []\ndefault: deny\n",
			`policy.yaml:3: "default" is a key of the policy section, not of the document: did you mean to indent it under policy:?`, 3},
		{"mode at the top level", "other: 1\nmode: audit\npolicy: {default: allow}\n",
			`policy.yaml:2: "mode" is a key of the policy section, not of the document: did you mean to indent it under policy:?`, 2},
		{"destination_check at the top level", "policy: {default: allow}\ndestination_check: off\n",
			`policy.yaml:2: "destination_check" is a key of the policy section, not of the document: did you mean to indent it under policy:?`, 2},
		{"ech at the top level", "policy: {default: allow}\nech: deny\n",
			`policy.yaml:2: "ech" is a key of the policy section, not of the document: did you mean to indent it under policy:?`, 2},
		// YAML keys are case-sensitive: "Rules" is no key of the section,
		// and ignored at the top level it would drop the rules all the same.
		{"Rules at the top level", "policy:\n  default: allow\nRules:\n  - {name: x, action: deny}\n",
			`policy.yaml:3: "Rules" is a key of the policy section written in another case, not a key of the document: did you mean to indent it under policy: as "rules"?`, 3},
		{"DEFAULT at the top level", "policy: {rules: []}\nDEFAULT: deny\n",
			`policy.yaml:2: "DEFAULT" is a key of the policy section written in another case, not a key of the document: did you mean to indent it under policy: as "default"?`, 2},
		{"Policy beside policy", "policy: {default: allow}\nPolicy:\n  default: deny\n",
			`policy.yaml:2: "Policy" is the policy section's key written in another case: write it "policy", once`, 2},
		// With no section at all, the policy key is the likelier slip.
		{"rules with no section", "rules:\n  - {name: x, action: deny}\n",
			`policy.yaml:1: "rules" is a key of the policy section, not of the document: did you mean to indent it under policy:?`, 1},
		{"empty document", "",
			`policy.yaml: empty document: no "policy" section`, 0},
		{"document not a mapping", "- a\n- b\n",
			`policy.yaml:1: the document must be a mapping with a "policy" key`, 1},
		{"duplicate policy", "policy: {}\npolicy: {}\n",
			`policy.yaml:2: duplicate key "policy"`, 2},
		// yaml.v3 reports where the construct that failed began (here the
		// top-level mapping), not the offending line 4.
		{"yaml syntax", "policy:\n  rules:\n    - name: x\n   action: deny\n",
			`policy.yaml:1: did not find expected key`, 1},
		{"yaml unterminated quote", "policy:\n  mode: 'x\n",
			`policy.yaml:2: found unexpected end of stream`, 2},
		{"yaml tab", "policy:\n\trules: []\n",
			`policy.yaml:2: found character that cannot start any token`, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("policy.yaml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("parsed: %+v", p)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.want)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.File != "policy.yaml" || ce.Line != tc.line {
				t.Errorf("ConfigError %+v, want line %d", ce, tc.line)
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	// Anchors and aliases, hex ports, single-port strings, upper-case
	// values, and other top-level keys.
	doc := `
corp: &corp ["10.0.0.0/8", "2001:db8::/32"]
appliance: {admin: ":9000"}
policy:
  mode: AUDIT
  default: Deny
  rules:
    - name: a
      dest_cidrs: *corp
      ports: [443, "8080", " 9000 - 9001 "]
      protocols: [TLS, Http]
      endpoints: [VPCE-0123456789ABCDEF0]
      action: Bump
      allow_unverified_upstream: false
`
	p, err := Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	r := p.rules[0]
	if p.Mode() != Audit || p.DefaultAction() != Deny || len(r.dests.prefixes) != 2 || r.action != Splice ||
		len(r.ports) != 3 || r.ports[0] != (portRange{443, 443}) || r.ports[1] != (portRange{8080, 8080}) || r.ports[2] != (portRange{9000, 9001}) ||
		r.protos != bitTLS|bitHTTP || r.endpoints[0] != "vpce-0123456789abcdef0" {
		t.Fatalf("parsed %+v / %+v", p, r)
	}
}

// TestParseICMP: icmp is a protocol name, in any case, alone or with others;
// with others, ports and domains are allowed (they apply to the others),
// domains as long as one of the others can carry a name.
func TestParseICMP(t *testing.T) {
	p, err := Parse("p.yaml", []byte(rulesDoc(
		"    - {name: ping, protocols: [icmp], dest_cidrs: [192.0.2.0/24], action: deny}",
		"    - {name: upper, protocols: [ICMP, Udp], action: allow}",
		"    - {name: mixed, protocols: [tls, icmp], ports: [22], domains: [x.example], action: deny}",
		"    - {name: bump-ping, protocols: [icmp], action: bump}",
	)))
	if err != nil {
		t.Fatal(err)
	}
	want := []uint8{bitICMP, bitICMP | bitUDP, bitTLS | bitICMP, bitICMP}
	for i, r := range p.rules {
		if r.protos != want[i] {
			t.Errorf("rule %s: protocol bits %#x, want %#x", r.name, r.protos, want[i])
		}
	}
}

func TestHolderReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "gwlbproxy.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := Subject{Protocol: "tcp", Domain: "x.example", Dest: ap("192.0.2.1:25")}

	var h Holder
	if h.Load() != nil || h.Load().Decide(f).Action != Deny {
		t.Fatal("zero Holder must hold no policy and deny")
	}
	if err := h.Reload(file); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}

	write("policy:\n  default: allow\n")
	if err := h.Reload(file); err != nil {
		t.Fatal(err)
	}
	first := h.Load()
	if first.Decide(f).Action != Allow {
		t.Fatalf("first policy: %+v", first.Decide(f))
	}

	write("policy:\n  default: deny\n  rules:\n    - name: x\n      action: allow\n      bogus: 1\n")
	err := h.Reload(file)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.File != file || ce.Line != 6 || !strings.Contains(err.Error(), file+`:6: rule "x": rule: unknown key "bogus"`) {
		t.Fatalf("bad file: %v", err)
	}
	if h.Load() != first || h.Load().Decide(f).Action != Allow {
		t.Fatal("a failed reload replaced the policy")
	}

	write("policy:\n  default: deny\n  rules:\n    - {name: mail, ports: [25], action: allow}\n")
	if err := h.Reload(file); err != nil {
		t.Fatal(err)
	}
	if h.Load() == first || withoutID(h.Load().Decide(f)) != (Decision{Action: Allow, Rule: "mail"}) ||
		h.Load().Decide(Subject{Protocol: "tcp", Dest: ap("192.0.2.1:26")}).Action != Deny {
		t.Fatal("a good reload did not swap the policy")
	}

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	second := h.Load()
	if err := h.Reload(file); err == nil || h.Load() != second {
		t.Fatalf("reload of a removed file: %v", err)
	}
}

// Readers see either the old or the new policy while reloads run.
func TestHolderConcurrent(t *testing.T) {
	file := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(file, []byte("policy: {default: deny}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var h Holder
	if err := h.Reload(file); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			if err := h.Reload(file); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
			if d := h.Load().Decide(Subject{Protocol: "tcp"}); d.Action != Deny {
				t.Fatalf("got %+v", d)
			}
		}
	}
}

// TestParseDomainsWithNamedProtocols: domains stay allowed beside any
// protocol whose flows can carry a name: udp (QUIC flows match it), or tcp
// with tls.
func TestParseDomainsWithNamedProtocols(t *testing.T) {
	for _, protos := range []string{"[udp]", "[quic]", "[tcp, tls]", "[icmp, http]", "[tls]"} {
		doc := rulesDoc("    - {name: n, domains: [x.com], protocols: " + protos + ", action: deny}")
		if _, err := Parse("policy.yaml", []byte(doc)); err != nil {
			t.Errorf("protocols %s with domains: %v", protos, err)
		}
	}
	// A lone --- before the one document, or a comment after a trailing
	// ---, is still one document.
	// A trailing --- with nothing after it (or only comments, blank lines,
	// more empty documents) is no second document: such files loaded
	// before the second-document check, and must still load after an
	// upgrade.
	for _, doc := range []string{"---\npolicy: {default: deny}\n", "policy: {default: deny}\n...\n",
		"policy:\n  default: deny\n---\n", "policy:\n  default: deny\n---", "policy:\n  default: deny\n---\n# end\n\n",
		"policy:\n  default: deny\n--- # end\n", "policy:\n  default: deny\n---\n---\n", "policy:\n  default: deny\n---\n...\n"} {
		if _, err := Parse("policy.yaml", []byte(doc)); err != nil {
			t.Errorf("%q: %v", doc, err)
		}
	}
}

// TestParseDomainEdges: the bounds TestParseErrors refuses past are
// accepted at the bound itself, and a quoted "null" is the name null,
// unlike the YAML null TestParseErrors refuses.
func TestParseDomainEdges(t *testing.T) {
	p := mustParse(t, rulesDoc(
		"    - {name: long, domains: [\""+domain253+"\"], action: deny}",
		"    - {name: quoted-null, domains: [\"null\"], action: deny}"))
	for name, rule := range map[string]string{domain253: "long", "NULL.": "quoted-null"} {
		if d := p.Decide(Subject{Protocol: ProtoHTTP, Domain: name}); d.Action != Deny || d.Rule != rule {
			t.Errorf("%q: %v by %q, want deny by %q", name, d.Action, d.Rule, rule)
		}
	}
}
