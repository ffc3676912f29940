package appliance

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// forgedAnswer is a DNS response, as a client's own resolver could send
// it, saying name is at addr for an hour.
func forgedAnswer(t *testing.T, name string, addr netip.Addr) []byte {
	t.Helper()
	n := dnsmessage.MustNewName(name)
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, Response: true})
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartAnswers(); err != nil {
		t.Fatal(err)
	}
	rh := dnsmessage.ResourceHeader{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 3600}
	if err := b.AResource(rh, dnsmessage.AResource{A: addr.As4()}); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// configuredRig is a rig whose policy is a file holding text, for a test
// to rewrite and reload.
func configuredRig(t *testing.T, text string) *rig {
	t.Helper()
	return newRig(t, func(o *Options) {
		o.Config = filepath.Join(t.TempDir(), "gwlbproxy.yaml")
		if err := os.WriteFile(o.Config, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}, nil)
}

// TestReloadForgetsObservedAnswers: a policy that let clients ask any DNS
// server let them plant answers (allowed.example → an address of their
// own) that the destination check then trusts. A reload to a policy that
// allows DNS only to trusted resolvers drops them; a rejected reload keeps
// them, since the policy in force has not changed.
func TestReloadForgetsObservedAnswers(t *testing.T) {
	const open = "policy:\n  default: allow\n"
	r := configuredRig(t, open)
	observe := func() {
		r.app.destCheck.Observe("vpce-0000000000000001", forgedAnswer(t, "allowed.example.", netip.MustParseAddr("198.51.100.66")))
	}
	observe()
	if n := r.app.destCheck.Stats().ObservedNames; n != 1 {
		t.Fatalf("%d observed names, want 1", n)
	}
	if err := os.WriteFile(r.app.opts.Config, []byte("policy:\n  default: [oops\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err == nil {
		t.Fatal("a bad file was loaded")
	}
	if n := r.app.destCheck.Stats().ObservedNames; n != 1 {
		t.Fatalf("a rejected reload left %d observed names, want the 1 kept", n)
	}
	if err := os.WriteFile(r.app.opts.Config, []byte(noRogueDNS), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := r.app.destCheck.Stats().ObservedNames; n != 0 {
		t.Fatalf("%d observed names after a reload, want 0: answers observed under the old policy still vouch", n)
	}
	// Forgotten before the new policy is in force: its store wakes the
	// lingers, which decide again at once (the proxy's OnChange), and went
	// by the old answers (592 of 10,000 checks passed on a planted one).
	observe()
	atChange := -1
	r.app.policy.OnChange(func() { atChange = r.app.destCheck.Stats().ObservedNames })
	if err := os.WriteFile(r.app.opts.Config, []byte(open), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	if atChange != 0 {
		t.Errorf("the new policy came into force with %d observed names, want 0", atChange)
	}
}

// TestReloadSameFileKeepsObservedAnswers: configuration management that
// re-applies the same file and sends SIGHUP (or a periodic reload) changes
// no policy, and must not forget what clients' resolvers answered: under
// destination_check: dns in enforce mode, every client's cached CDN or
// geo-DNS answer would fail the check until it asked again. A file that
// did change still forgets them.
func TestReloadSameFileKeepsObservedAnswers(t *testing.T) {
	const open = "policy:\n  default: allow\n"
	r := configuredRig(t, open)
	r.app.destCheck.Observe("vpce-0000000000000001", forgedAnswer(t, "cdn.example.", netip.MustParseAddr("198.51.100.7")))
	for i := range 2 {
		// Written again, as configuration management does: same bytes.
		if err := os.WriteFile(r.app.opts.Config, []byte(open), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := r.app.Reload(); err != nil {
			t.Fatal(err)
		}
		if n := r.app.destCheck.Stats().ObservedNames; n != 1 {
			t.Fatalf("reload %d of the same file: %d observed names, want the 1 kept", i+1, n)
		}
	}
	if st := r.app.policy.Status(); st.Reloads != 2 {
		t.Fatalf("%d reloads counted, want 2: a reload of the same file is still a reload", st.Reloads)
	}
	if err := os.WriteFile(r.app.opts.Config, []byte(noRogueDNS), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := r.app.destCheck.Stats().ObservedNames; n != 0 {
		t.Fatalf("%d observed names after a reload of a changed file, want 0", n)
	}
}

// noRogueDNS is a policy that tightens DNS: no UDP to port 53.
const noRogueDNS = "policy:\n  default: allow\n  rules:\n    - name: no-rogue-dns\n      protocols: [udp]\n      ports: [53]\n      action: deny\n"

// TestReloadForgetsAnswerObservedMidReload: an answer checked between the
// reload's forgetting and its store of the new policy (the old policy
// still in force, the generation already new) was kept, and vouched under
// the new policy (review r6s26 F6). The reload forgets again once the new
// policy is stored.
func TestReloadForgetsAnswerObservedMidReload(t *testing.T) {
	const open = "policy:\n  default: allow\n"
	r := configuredRig(t, open)
	old := reloadForgotten
	t.Cleanup(func() { reloadForgotten = old })
	reloadForgotten = func() {
		// The proxy's answer path: the generation read, the flow's policy
		// still the one in force, the answer stored.
		dc := r.app.destCheck
		dc.ObserveAt(dc.Generation(), "vpce-0000000000000001", netip.Addr{},
			forgedAnswer(t, "allowed.example.", netip.MustParseAddr("198.51.100.66")))
	}
	if err := os.WriteFile(r.app.opts.Config, []byte(noRogueDNS), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := r.app.destCheck.Stats().ObservedNames; n != 0 {
		t.Fatalf("%d observed names after the reload, want 0: an answer observed during it vouches under the new policy", n)
	}
}

// TestReloadHoldsAnswersUntilStored: an answer relayed between the
// reload's first forget and its store (the hook) is not taken in at all,
// not only forgotten after the store: a flow checked between the store
// and the second forget would pass on it, and keep that pass for ever
// (review r3s27 F1). After the reload, answers are observed again.
func TestReloadHoldsAnswersUntilStored(t *testing.T) {
	const open = "policy:\n  default: allow\n"
	r := configuredRig(t, open)
	dc := r.app.destCheck
	answer := forgedAnswer(t, "allowed.example.", netip.MustParseAddr("198.51.100.66"))
	old := reloadForgotten
	t.Cleanup(func() { reloadForgotten = old })
	held := -1
	reloadForgotten = func() {
		dc.ObserveAt(dc.Generation(), "vpce-0000000000000001", netip.Addr{}, answer)
		held = dc.Stats().ObservedNames
	}
	if err := os.WriteFile(r.app.opts.Config, []byte(noRogueDNS), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	if held != 0 {
		t.Fatalf("%d observed names in the reload's window, want 0: an answer relayed before the store was taken in", held)
	}
	dc.ObserveAt(dc.Generation(), "vpce-0000000000000001", netip.Addr{}, answer)
	if n := dc.Stats().ObservedNames; n != 1 {
		t.Fatalf("%d observed names after the reload, want 1: the reload left the answers held", n)
	}
}
