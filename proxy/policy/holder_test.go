package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHolderStatus: the status names the policy in force by its file's
// hash and counts reloads; a rejected reload is counted, says why, and
// leaves the policy and its hash in force; a file that lost its `default`
// (cut short at a line boundary) does not turn deny into allow.
func TestHolderStatus(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tcp := Subject{Protocol: ProtoTCP, Dest: ap("192.0.2.1:22")}
	var h Holder
	const first = "policy:\n  mode: enforce\n  default: deny\n  rules:\n    - {name: web, ports: [443], action: allow}\n"
	write(first)
	if err := h.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	st := h.Status()
	if st.File != file || st.Hash != FileHash([]byte(first)) || len(st.Hash) != 12 || st.Mode != "enforce" ||
		st.Default != "deny" || !st.DefaultExplicit || st.Rules != 1 || st.LoadedAt.IsZero() ||
		st.Reloads != 0 || st.ReloadErrors != 0 || !st.LastReload.IsZero() || st.LastError != "" {
		t.Fatalf("after start: %+v", st)
	}
	inForce := h.Load()

	// A file with an error: rejected, counted, the old policy stays.
	write("policy:\n  default: deny\n  rules:\n    - {name: x, action: allow, bogus: 1}\n")
	if err := h.Reload(file); err == nil {
		t.Fatal("a bad file was loaded")
	}
	st = h.Status()
	if st.ReloadErrors != 1 || st.Reloads != 0 || !strings.Contains(st.LastError, `unknown key "bogus"`) ||
		st.LastReload.IsZero() || st.Hash != FileHash([]byte(first)) || h.Load() != inForce {
		t.Fatalf("after a bad reload: %+v", st)
	}

	// The first file cut short after its mode: it parses, as allow-all.
	write("policy:\n  mode: enforce\n")
	err := h.Reload(file)
	if !errors.Is(err, ErrImplicitAllow) || h.Load() != inForce || h.Load().Decide(tcp).Action != Deny {
		t.Fatalf("reload of a file without default over deny: %v; tcp now %v", err, h.Load().Decide(tcp).Action)
	}
	if st = h.Status(); st.ReloadErrors != 2 || !strings.Contains(st.LastError, "no `default`") {
		t.Fatalf("after a file without default: %+v", st)
	}

	// A good file: loaded, counted, its hash in force, the error cleared.
	const second = "policy:\n  default: deny\n  rules:\n    - {name: ssh, ports: [22], action: allow}\n    - {name: web, ports: [443], action: allow}\n"
	write(second)
	if err := h.Reload(file); err != nil {
		t.Fatal(err)
	}
	st = h.Status()
	if st.Reloads != 1 || st.ReloadErrors != 2 || st.LastError != "" || st.Rules != 2 ||
		st.Hash != FileHash([]byte(second)) || st.Hash == FileHash([]byte(first)) || h.Load().Decide(tcp).Action != Allow {
		t.Fatalf("after a good reload: %+v", st)
	}

	// Allow said outright is taken; then a file without default over
	// allow changes nothing and is taken too, flagged in the status.
	write("policy:\n  default: allow\n")
	if err := h.Reload(file); err != nil {
		t.Fatal(err)
	}
	write("policy:\n  mode: enforce\n")
	if err := h.Reload(file); err != nil {
		t.Fatal(err)
	}
	if st = h.Status(); st.Reloads != 3 || st.Default != "allow" || st.DefaultExplicit {
		t.Fatalf("after allow: %+v", st)
	}
}

// TestPolicyID: a policy's ID is its file's hash, as the status shows it,
// and every decision carries the ID of the policy that made it, early ones
// too: a record written from the decision names that policy, whatever is
// in force by then. A built-in policy has the hash of its own bytes.
func TestPolicyID(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	const doc = "policy:\n  default: deny\n  rules:\n    - {name: ssh, ports: [22], action: allow}\n"
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var h Holder
	if err := h.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	p := h.Load()
	if id := p.ID(); id != FileHash([]byte(doc)) || id != h.Status().Hash {
		t.Fatalf("ID %q, want the file's hash %q as /stats shows it (%q)", id, FileHash([]byte(doc)), h.Status().Hash)
	}
	if d := p.Decide(Subject{Protocol: ProtoTCP, Dest: ap("192.0.2.1:22")}); d.Rule != "ssh" || d.Policy != p.ID() {
		t.Errorf("rule decision %+v, want ssh by policy %q", d, p.ID())
	}
	if d := p.Decide(Subject{Protocol: ProtoTCP, Dest: ap("192.0.2.1:80")}); d.Rule != DefaultRule || d.Policy != p.ID() {
		t.Errorf("default decision %+v, want default by policy %q", d, p.ID())
	}
	if d, ok := p.DecideEarly(Subject{Dest: ap("192.0.2.1:80")}); !ok || d.Policy != p.ID() {
		t.Errorf("early decision %+v (%v), want a deny by policy %q", d, ok, p.ID())
	}

	const builtIn = "policy: {default: allow}\n"
	b, err := Parse("built-in", []byte(builtIn))
	if err != nil {
		t.Fatal(err)
	}
	h.Store(b)
	if id := h.Load().ID(); id != FileHash([]byte(builtIn)) || h.Status().Hash != id {
		t.Errorf("built-in policy ID %q, status hash %q: want both %q", id, h.Status().Hash, FileHash([]byte(builtIn)))
	}
	var none *Policy
	if d := none.Decide(Subject{}); d.Policy != "" || none.ID() != "" {
		t.Errorf("a nil policy's decision %+v names a policy", d)
	}
}

// TestHolderOnChange: the functions given to OnChange run after each
// change of the policy in force (Store, LoadFile, a reload that loads),
// and not after a reload that is rejected.
func TestHolderOnChange(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var h Holder
	changes := 0
	h.OnChange(func() { changes++ })
	write("policy: {default: allow}\n")
	if err := h.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	write("policy: {default: deny}\n")
	if err := h.Reload(file); err != nil {
		t.Fatal(err)
	}
	write("policy: {default: nonsense}\n")
	if err := h.Reload(file); err == nil {
		t.Fatal("a bad file reloaded")
	}
	h.Store(h.Load())
	if changes != 3 {
		t.Errorf("OnChange ran %d times, want 3 (LoadFile, the good reload, Store)", changes)
	}
}
