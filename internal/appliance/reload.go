package appliance

import (
	"errors"
	"log/slog"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// Reload re-reads --config (SIGHUP). A file with an error is rejected and
// the running policy stays in force. Allowed flows are decided again on
// their next bytes (HTTP requests each as it comes). DNS answers observed
// under the old policy are forgotten if the file changed: the old one may
// have let clients ask resolvers of their own; and a flow whose
// destination check passed on one of them is checked again then
// (proxy/destcheck.go), not only new ones. A reload of the same bytes (configuration
// management re-applying the file, a periodic SIGHUP) keeps them: the
// policy has not changed, and forgetting them would fail the destination
// checks of clients' cached answers (CDN, geo-DNS) until they ask again.
func (a *Appliance) Reload() error {
	if a.opts.Config == "" {
		// Said, not passed over: whoever sent it expected a file read.
		slog.Warn("SIGHUP: no --config, so there is nothing to reload; the built-in policy stays (every flow allowed, nothing decrypted)")
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	before := a.policy.Status()
	changed := false
	check := func(p *policy.Policy) error {
		if err := a.canCarryOut(p); err != nil {
			return err
		}
		// The hash is of the file's bytes, and a policy is its file's
		// bytes alone: equal hashes, equal policies. Forgotten before the
		// new policy is stored: its store wakes the lingers, which
		// decide again at once, and would go by the old answers. And
		// held until the forget after the store: an answer relayed
		// meanwhile, the old policy still in force, would be observed
		// at the new generation, and a flow checked between the store
		// and that forget would pass on it, and keep a pass no later
		// forget withdraws (review r3s27 F1).
		if changed = before.File != a.opts.Config || p.ID() != before.Hash; changed {
			a.destCheck.HoldObserved()
			reloadForgotten()
		}
		return nil
	}
	err := a.policy.ReloadChecked(a.opts.Config, check)
	if changed {
		// And forgotten again once it is stored, which ends the hold: an
		// answer read at the held generation and stored after this
		// finds the generation moved (ObserveAt), and one read after it
		// under the old policy finds its flow's policy replaced (review
		// r6s26 F6). Also after a failed reload, which must not leave
		// the answers held.
		a.destCheck.ForgetObserved()
	}
	if err != nil {
		slog.Error("policy reload rejected; the running policy stays", "err", err,
			"hash", before.Hash, "mode", before.Mode, "default", before.Default, "rules", before.Rules)
		return err
	}
	after := a.policy.Status()
	logPolicy("policy reloaded", after, "previous_hash", before.Hash, "dns_answers_forgotten", changed)
	return nil
}

// logPolicy logs the policy in force, by its mode, default, rules and the
// hash of its file, which is also its ID, the `policy` of the records it
// decides (a built-in policy's is of its own bytes); and warns when it is
// the built-in one or its default is allow by omission.
func logPolicy(msg string, st policy.Status, args ...any) {
	args = append([]any{"file", st.File, "hash", st.Hash, "mode", st.Mode, "default", st.Default, "rules", st.Rules}, args...)
	slog.Info(msg, args...)
	if st.File == "" {
		// Documented, but also what a --config that went missing from a
		// unit or a script looks like: say it louder than the INFO line.
		slog.Warn("no --config: the built-in policy is in force, so every flow is allowed and nothing is decrypted")
	}
	if !st.DefaultExplicit {
		slog.Warn("the policy has no `default`: flows no rule matches are ALLOWED; write `default: allow` (or deny) to say which is meant",
			"file", st.File, "rules", st.Rules)
	}
}

// canCarryOut refuses a policy that needs what the appliance started
// without: bump rules need the CA, which an appliance that started in audit
// mode did not load. Loading it anyway would turn every bump into a splice
// without a word; a restart loads the CA.
func (a *Appliance) canCarryOut(p *policy.Policy) error {
	if p.NeedsCA() && a.minter == nil {
		return errors.New("the policy bumps TLS, but the appliance started without a CA (in audit mode): restart it to load one")
	}
	return nil
}

// reloadForgotten runs between a reload's first forgetting of the observed
// answers and its store of the new policy; a hook for tests.
var reloadForgotten = func() {}
