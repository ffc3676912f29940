package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// policyUsage is the usage of the policy subcommand.
const policyUsage = "usage: gwlbproxy policy check FILE"

// runPolicy runs `gwlbproxy policy check FILE`: it parses FILE exactly as
// a start or a reload would, loads nothing, and prints one line naming the
// policy (mode, default, rules, the hash /stats shows) if it is valid.
// The unit's ExecReload runs it before the SIGHUP, so that `systemctl
// reload` fails, with the error, on a file the appliance would reject.
//
// It is stricter than a reload in one way: a file without a `default` key
// fails, since the default is then allow by omission, which is what a file
// cut short at a line boundary looks like. It does not look for the CA: it
// cannot know the flags of the running appliance. The line says when the
// policy bumps TLS; an appliance that started in audit mode, without a CA,
// refuses such a reload (reload_errors in /stats) and must be restarted.
func runPolicy(args []string, stdout, _ io.Writer) error {
	if len(args) != 2 || args[0] != "check" {
		return errors.New(policyUsage)
	}
	file := args[1]
	p, defaultExplicit, hash, err := policy.Check(file)
	if err != nil {
		return fmt.Errorf("policy check: %w", err)
	}
	if !defaultExplicit {
		return fmt.Errorf("policy check: %s: no `default`: unmatched flows would be allowed by omission (a file cut short looks like this); write `default: allow` or `default: deny`", file)
	}
	bump := ""
	if p.NeedsCA() {
		bump = ", bumps TLS (needs the CA)"
	}
	rules := "rules"
	if p.Len() == 1 {
		rules = "rule"
	}
	fmt.Fprintf(stdout, "%s: ok: mode %s, default %s, %d %s, sha256 %s%s\n",
		file, p.Mode(), p.DefaultAction(), p.Len(), rules, hash, bump)
	return nil
}
