package policy

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Section is the top-level key of the config document that holds the
// policy; Parse ignores every other top-level key but the section's own
// keys (rules, default, ...), which there can only be mis-indented.
const Section = "policy"

// ConfigError is a problem in a policy document, located by file and line.
// Its message reads like `policy.yaml:12: rule "inspect-corp": invalid CIDR
// "10.0.0.0/33"`.
type ConfigError struct {
	// File is the file name given to Parse.
	File string
	// Line is 1-based; 0 when the problem has no single place (an empty
	// document) or the YAML parser did not say. For YAML syntax errors it is
	// the line yaml.v3 reports, which is where the construct that failed to
	// parse began (often an enclosing mapping), not always the bad line.
	Line int
	// Rule is the name of the rule the problem is in, if it has one.
	Rule string
	// RuleIndex is the rule's 1-based position, 0 outside rules.
	RuleIndex int
	// Msg says what is wrong.
	Msg string
	// Err is the underlying error, e.g. the YAML parser's, or nil.
	Err error
}

// Error formats the problem as "file:line: rule \"name\": message".
func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	switch {
	case e.Rule != "":
		fmt.Fprintf(&b, "rule %q: ", e.Rule)
	case e.RuleIndex > 0:
		fmt.Fprintf(&b, "rule #%d: ", e.RuleIndex)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying error.
func (e *ConfigError) Unwrap() error { return e.Err }

// yamlLine picks the line out of yaml.v3's "yaml: line N: msg" errors.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Parse parses the Section key of a YAML config document; filename is used
// in error messages only. Every error is a *ConfigError naming the file and,
// where there is one, the line. Unknown keys inside the section and its
// rules are errors, so that a typo cannot silently widen a rule; so are
// empty condition lists (write no condition to match anything), and so is
// a key of the section at the top level. A document without the section is
// an error too: write `policy: {default: allow}` to allow everything.
func Parse(filename string, data []byte) (*Policy, error) {
	p, _, err := parse(filename, data)
	return p, err
}

// parsed is what parse learns about a file besides its policy.
type parsed struct {
	// defaultExplicit says the file has a `default` key: without one the
	// default is allow, which a file cut short before that line, or a key
	// deleted by mistake, turns a deny-by-default policy into.
	defaultExplicit bool
}

// parse is Parse, telling also what the holder needs to judge a reload.
func parse(filename string, data []byte) (*Policy, parsed, error) {
	ps := &parser{file: filename}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return nil, parsed{}, yamlError(filename, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, parsed{}, ps.errf(nil, "empty document: no %q section", Section)
	}
	// yaml.Unmarshal would read the first document and ignore the rest: a
	// policy pasted after a "---" would look loaded and not be. A document
	// with nothing in it (a trailing "---", comments only) is no policy
	// and hides none: files that end so loaded before, and still do.
	for {
		var more yaml.Node
		err := dec.Decode(&more)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, parsed{}, yamlError(filename, err)
		}
		if !emptyDocument(&more) {
			return nil, parsed{}, ps.errf(&more, "a second YAML document (after ---): the policy file must be one document")
		}
	}
	root := resolve(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		return nil, parsed{}, ps.errf(root, "the document must be a mapping with a %q key", Section)
	}
	var section *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if k.Kind != yaml.ScalarNode {
			continue
		}
		if k.Value == Section {
			if section != nil {
				return nil, parsed{}, ps.errf(k, "duplicate key %q", Section)
			}
			section = root.Content[i+1]
			continue
		}
		// Other top-level keys are ignored (the file may hold more than
		// the policy), but a key of the section standing there is a
		// policy line indented too little: ignored, it would drop every
		// rule, or the default, without a word.
		if policyKeys.lookup(k.Value) != nil {
			return nil, parsed{}, ps.errf(k, "%q is a key of the %s section, not of the document: did you mean to indent it under %s:?", k.Value, Section, Section)
		}
		// YAML keys are case-sensitive, so "Rules" or "Policy" would be
		// ignored here too, and the rules with them: no other key of a
		// document is likely to be one of these in another case.
		if strings.EqualFold(k.Value, Section) {
			return nil, parsed{}, ps.errf(k, "%q is the %s section's key written in another case: write it %q, once", k.Value, Section, Section)
		}
		if name, ok := policyKeys.foldLookup(k.Value); ok {
			return nil, parsed{}, ps.errf(k, "%q is a key of the %s section written in another case, not a key of the document: did you mean to indent it under %s: as %q?", k.Value, Section, Section, name)
		}
	}
	if section == nil {
		return nil, parsed{}, ps.errf(root, "no %q section", Section)
	}
	p, err := ps.policy(resolve(section))
	if p != nil {
		p.id = FileHash(data)
		// Indexed now: a long blocklist takes milliseconds, which no
		// decision should wait for.
		p.addrs = indexAddrs(p.rules)
	}
	return p, parsed{defaultExplicit: ps.defaultExplicit}, err
}

// emptyDocument says a document has no content: what the YAML parser
// makes of nothing but comments or blank lines after a "---", an implicit
// null. An explicit null (~, null, !!null) is content.
func emptyDocument(doc *yaml.Node) bool {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return true
	}
	n := doc.Content[0]
	return len(doc.Content) == 1 && n.Kind == yaml.ScalarNode && n.Tag == "!!null" && n.Value == "" && n.Style == 0 && n.Anchor == ""
}

// yamlError turns an error of the YAML parser into a *ConfigError.
func yamlError(filename string, err error) *ConfigError {
	e := &ConfigError{File: filename, Msg: strings.TrimPrefix(err.Error(), "yaml: "), Err: err}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = m[2]
	}
	return e
}

func parseAction(s string) (Action, bool) {
	for a, name := range actionNames {
		if strings.EqualFold(s, name) {
			return Action(a), true
		}
	}
	return 0, false
}

// policyDoc is the policy section as readMapping fills it in.
type policyDoc struct {
	p     *Policy
	rules *yaml.Node // read after the other keys, wherever it stands
}

// policyKeys are the keys of the policy section.
var policyKeys = keyTable[policyDoc]{
	{"mode", func(ps *parser, _, v *yaml.Node, d *policyDoc) error {
		s, err := ps.str(v, "mode")
		if err != nil {
			return err
		}
		switch strings.ToLower(s) {
		case "enforce":
			d.p.mode = Enforce
		case "audit":
			d.p.mode = Audit
		default:
			return ps.errf(v, "mode: unknown mode %q (want enforce or audit)", s)
		}
		return nil
	}},
	{"default", func(ps *parser, _, v *yaml.Node, d *policyDoc) error {
		s, err := ps.str(v, "default")
		if err != nil {
			return err
		}
		a, ok := parseAction(s)
		if !ok {
			return ps.errf(v, "default: unknown action %q (want allow, deny, bump or splice)", s)
		}
		d.p.def = a
		ps.defaultExplicit = true
		return nil
	}},
	{"destination_check", func(ps *parser, _, v *yaml.Node, d *policyDoc) error {
		s, err := ps.str(v, "destination_check")
		if err != nil {
			return err
		}
		switch strings.ToLower(s) {
		case "dns":
			d.p.destCheck = CheckDNS
		case "off":
			d.p.destCheck = CheckOff
		default:
			return ps.errf(v, "destination_check: unknown check %q (want dns or off)", s)
		}
		return nil
	}},
	{"ech", func(ps *parser, _, v *yaml.Node, d *policyDoc) error {
		s, err := ps.str(v, "ech")
		if err != nil {
			return err
		}
		switch strings.ToLower(s) {
		case "allow":
			d.p.denyECH = false
		case "deny":
			d.p.denyECH = true
		default:
			return ps.errf(v, "ech: unknown setting %q (want allow or deny)", s)
		}
		return nil
	}},
	{"rules", func(_ *parser, _, v *yaml.Node, d *policyDoc) error {
		d.rules = v
		return nil
	}},
}

func (ps *parser) policy(n *yaml.Node) (*Policy, error) {
	p := &Policy{mode: Enforce, def: Allow}
	d := policyDoc{p: p}
	if err := readMapping(ps, n, "policy", policyKeys, &d); err != nil {
		return nil, err
	}
	if rulesNode := d.rules; rulesNode != nil && !isNull(rulesNode) {
		if rulesNode.Kind != yaml.SequenceNode {
			return nil, ps.errf(rulesNode, "rules: want a list of rules")
		}
		firstLine := make(map[string]int, len(rulesNode.Content))
		for i, rn := range rulesNode.Content {
			ps.rule, ps.ruleIndex = "", i+1
			r, err := ps.parseRule(resolve(rn))
			if err != nil {
				return nil, err
			}
			// Names differing only in case are one name to a reader.
			if l, dup := firstLine[strings.ToLower(r.name)]; dup {
				return nil, ps.errf(rn, "duplicate rule name (first at line %d)", l)
			}
			firstLine[strings.ToLower(r.name)] = rn.Line
			p.rules = append(p.rules, r)
		}
		ps.rule, ps.ruleIndex = "", 0
	}
	if p.mode == Audit {
		// Audit never decrypts.
		if p.def == Bump {
			p.def = Splice
		}
		for i := range p.rules {
			if p.rules[i].action == Bump {
				p.rules[i].action = Splice
			}
		}
	}
	return p, nil
}

// ruleDoc is a rule as readMapping fills it in.
type ruleDoc struct {
	r                      rule
	haveName, haveAction   bool
	portsNode, domainsNode *yaml.Node // the keys, for messages about them
}

// ruleKeys are the keys of a rule.
var ruleKeys = keyTable[ruleDoc]{
	{"name", func(ps *parser, _, v *yaml.Node, d *ruleDoc) error {
		s, err := ps.str(v, "name")
		if err != nil {
			return err
		}
		if d.r.name = strings.TrimSpace(s); d.r.name == "" {
			return ps.errf(v, "name: empty")
		}
		// Case folded: records read by people, "Default" would pass for
		// the default.
		if strings.EqualFold(d.r.name, DefaultRule) {
			return ps.errf(v, "name: %q is reserved for flows no rule matches", d.r.name)
		}
		if strings.EqualFold(d.r.name, TrustPageRule) {
			return ps.errf(v, "name: %q is reserved for the appliance's CA page", d.r.name)
		}
		d.haveName = true
		return nil
	}},
	{"domains", func(ps *parser, k, v *yaml.Node, d *ruleDoc) error {
		d.domainsNode = k
		return ps.domains(v, &d.r)
	}},
	{"dest_cidrs", func(ps *parser, _, v *yaml.Node, d *ruleDoc) error {
		prefixes, err := ps.prefixes(v, "dest_cidrs")
		d.r.dests = &destPrefixes{prefixes: prefixes} // deny is set once the action is known
		return err
	}},
	{"ports", func(ps *parser, k, v *yaml.Node, d *ruleDoc) error {
		d.portsNode = k
		return ps.ports(v, &d.r)
	}},
	{"protocols", func(ps *parser, _, v *yaml.Node, d *ruleDoc) error {
		items, err := ps.list(v, "protocols")
		if err != nil {
			return err
		}
		for _, it := range items {
			b := protoBit(strings.ToLower(it.Value))
			if b == 0 {
				return ps.errf(it, "unknown protocol %q (want tls, http, tcp, quic, udp or icmp)", it.Value)
			}
			d.r.protos |= b
		}
		return nil
	}},
	{"client_cidrs", func(ps *parser, _, v *yaml.Node, d *ruleDoc) (err error) {
		d.r.clients, err = ps.prefixes(v, "client_cidrs")
		return err
	}},
	{"endpoints", func(ps *parser, _, v *yaml.Node, d *ruleDoc) error {
		items, err := ps.list(v, "endpoints")
		if err != nil {
			return err
		}
		for _, it := range items {
			id := strings.ToLower(it.Value)
			if !validEndpoint(id) {
				return ps.errf(it, "invalid endpoint %q (want a GWLB endpoint ID: vpce- and 17 hex digits, the first 0)", it.Value)
			}
			d.r.endpoints = append(d.r.endpoints, id)
		}
		return nil
	}},
	{"action", func(ps *parser, _, v *yaml.Node, d *ruleDoc) error {
		s, err := ps.str(v, "action")
		if err != nil {
			return err
		}
		a, ok := parseAction(s)
		if !ok {
			return ps.errf(v, "unknown action %q (want allow, deny, bump or splice)", s)
		}
		d.r.action, d.haveAction = a, true
		return nil
	}},
	{"allow_unverified_upstream", func(ps *parser, _, v *yaml.Node, d *ruleDoc) error {
		if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
			return ps.errf(v, "allow_unverified_upstream: want true or false")
		}
		if err := v.Decode(&d.r.allowUnverified); err != nil {
			return ps.errf(v, "allow_unverified_upstream: %v", err)
		}
		return nil
	}},
}

func (ps *parser) parseRule(n *yaml.Node) (rule, error) {
	if n.Kind != yaml.MappingNode {
		return rule{}, ps.errf(n, "a rule must be a mapping")
	}
	// The name first, so that every later message can name the rule.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k, v := n.Content[i], resolve(n.Content[i+1]); k.Value == "name" && v.Kind == yaml.ScalarNode {
			ps.rule = strings.TrimSpace(v.Value)
			break
		}
	}
	var d ruleDoc
	if err := readMapping(ps, n, "rule", ruleKeys, &d); err != nil {
		return d.r, err
	}
	r := d.r
	if !d.haveName {
		return r, ps.errf(n, "no name")
	}
	if !d.haveAction {
		return r, ps.errf(n, "no action (want allow, deny, bump or splice)")
	}
	if r.dests != nil {
		r.dests.deny = r.action == Deny
	}
	if r.allowUnverified && r.action != Bump {
		// Only a bumped connection verifies the upstream itself; on any
		// other action the flag would do nothing, and its presence says the
		// author expects something it does not give.
		return r, ps.errf(n, "allow_unverified_upstream only applies to action bump, not %s", r.action)
	}
	// ICMP echo has neither ports nor a name, plain TCP no name: a rule
	// that could never match surely means something its author did not
	// get, and a deny rule that never matches lets through what it names.
	if r.protos == bitICMP && d.portsNode != nil {
		return r, ps.errf(d.portsNode, "ports: ICMP has no ports, so a rule for protocol icmp alone with ports would never match")
	}
	if r.protos != 0 && r.protos&^namelessProtos == 0 && d.domainsNode != nil {
		return r, ps.errf(d.domainsNode, "domains: %s flows have no name, so a rule for protocols %s alone with domains would never match (names come from TLS, HTTP and QUIC: add those protocols, or leave domains out)",
			protoList(r.protos, " and "), protoList(r.protos, ", "))
	}
	return r, nil
}

// namelessProtos are the protocols whose flows never carry a name (Subject
// Domain): tcp is TCP that is neither TLS nor HTTP, icmp is echo. udp is
// not among them: a rule for udp matches QUIC flows too, and those have
// their SNI.
const namelessProtos = bitTCP | bitICMP

// protoList names the protocols of bits, in the order the docs list them,
// joined by sep.
func protoList(bits uint8, sep string) string {
	var names []string
	for _, p := range []string{ProtoTLS, ProtoHTTP, ProtoTCP, ProtoQUIC, ProtoUDP, ProtoICMP} {
		if bits&protoBit(p) != 0 {
			names = append(names, p)
		}
	}
	return strings.Join(names, sep)
}
