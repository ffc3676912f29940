package policy

// The YAML side of parsing: walking yaml.v3's nodes, locating problems by
// line, and reading mappings by tables of keys.

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// parser reads one document; it knows the file name for messages.
type parser struct {
	file      string
	rule      string
	ruleIndex int
	// defaultExplicit: the policy section has a default key.
	defaultExplicit bool
}

func (ps *parser) errf(n *yaml.Node, format string, args ...any) error {
	e := &ConfigError{File: ps.file, Rule: ps.rule, RuleIndex: ps.ruleIndex, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line = n.Line
	}
	return e
}

// resolve follows aliases (*anchor) to the node they stand for.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// A key is one row of a keyTable: a key a mapping of the document may
// have, and how its value is read into the T being built. k is the key's
// node and v its value's (aliases resolved), for messages to point at.
type key[T any] struct {
	name string
	set  func(ps *parser, k, v *yaml.Node, into *T) error
}

// A keyTable is every key one kind of mapping may have, in the order that
// messages list them; adding a key is adding a row.
type keyTable[T any] []key[T]

func (t keyTable[T]) names() []string {
	names := make([]string, len(t))
	for i, k := range t {
		names[i] = k.name
	}
	return names
}

func (t keyTable[T]) lookup(name string) *key[T] {
	for i := range t {
		if t[i].name == name {
			return &t[i]
		}
	}
	return nil
}

// foldLookup finds the key that name spells in another case.
func (t keyTable[T]) foldLookup(name string) (string, bool) {
	for i := range t {
		if strings.EqualFold(t[i].name, name) {
			return t[i].name, true
		}
	}
	return "", false
}

// readMapping reads mapping n into into by the rows of table; where names
// the mapping in messages. A null n is an empty mapping. Every key is
// checked (duplicate, non-scalar, merge and unknown keys are errors) before
// any value is read, so a typo in a key is reported before a problem in a
// value; values are then read in the document's order.
func readMapping[T any](ps *parser, n *yaml.Node, where string, table keyTable[T], into *T) error {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return ps.errf(n, "%s must be a mapping", where)
	}
	type entry struct {
		row  *key[T]
		k, v *yaml.Node
	}
	seen := make(map[string]bool, len(n.Content)/2)
	entries := make([]entry, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return ps.errf(k, "%s: keys must be plain names", where)
		}
		if k.ShortTag() == "!!merge" {
			return ps.errf(k, "%s: merge keys (<<) are not supported", where)
		}
		row := table.lookup(k.Value)
		if row == nil {
			return ps.errf(k, "%s: unknown key %q (want %s)", where, k.Value, strings.Join(table.names(), ", "))
		}
		if seen[k.Value] {
			return ps.errf(k, "%s: duplicate key %q", where, k.Value)
		}
		seen[k.Value] = true
		entries = append(entries, entry{row, k, v})
	}
	for _, e := range entries {
		if err := e.row.set(ps, e.k, e.v, into); err != nil {
			return err
		}
	}
	return nil
}

// str returns a scalar's value; key names it in messages.
func (ps *parser) str(n *yaml.Node, key string) (string, error) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		return "", ps.errf(n, "%s: want a single value", key)
	}
	return n.Value, nil
}

// list returns a non-empty sequence's items.
func (ps *parser) list(n *yaml.Node, key string) ([]*yaml.Node, error) {
	if isNull(n) || (n.Kind == yaml.SequenceNode && len(n.Content) == 0) {
		return nil, ps.errf(n, "%s: empty list (leave the key out to match anything)", key)
	}
	if n.Kind != yaml.SequenceNode {
		return nil, ps.errf(n, "%s: want a list, e.g. [a, b]", key)
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, it := range n.Content {
		items[i] = resolve(it)
		if items[i].Kind != yaml.ScalarNode || isNull(items[i]) {
			return nil, ps.errf(items[i], "%s: entries must be single values", key)
		}
	}
	return items, nil
}
