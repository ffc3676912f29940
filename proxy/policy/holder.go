package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Holder holds the running policy for concurrent readers and swaps it on
// reload, keeping count of the reloads for /stats. The zero Holder is ready
// to use; Load returns nil until the first successful Reload or Store (and
// a nil *Policy denies everything).
type Holder struct {
	// mu serialises Reload, so that two reloads racing (two SIGHUPs) cannot
	// store an older file's policy after a newer one.
	mu  sync.Mutex
	cur atomic.Pointer[Policy]
	// smu guards status, which /stats reads while a reload may be reading
	// its file under mu.
	smu    sync.Mutex
	status Status
	// onChange runs after each change of the policy in force (OnChange);
	// guarded by smu.
	onChange []func()
}

// OnChange has f run after each change of the policy in force: a Store, a
// LoadFile, a reload that loads. f runs with the holder's lock held: it
// must be quick, and must not call the holder.
func (h *Holder) OnChange(f func()) {
	h.smu.Lock()
	defer h.smu.Unlock()
	h.onChange = append(h.onChange, f)
}

// changed runs the OnChange functions; h.smu is held.
func (h *Holder) changed() {
	for _, f := range h.onChange {
		f()
	}
}

// Status is what /stats shows of the policy: the one in force and how its
// reloads went.
type Status struct {
	// File is the file the policy in force was read from ("": built in).
	File string `json:"file,omitempty"`
	// Hash is the first 12 hex digits of the SHA-256 of that file's bytes,
	// to tell which version is in force; for a built-in policy, of the
	// bytes it was parsed from. It is the ID the records name the policy
	// by (Policy.ID).
	Hash string `json:"hash,omitempty"`
	// Mode, Default and Rules describe the policy in force.
	Mode    string `json:"mode"`
	Default string `json:"default"`
	// DefaultExplicit is false when the file had no `default` key, so that
	// the default is allow by omission.
	DefaultExplicit bool `json:"default_explicit"`
	Rules           int  `json:"rules"`
	// LoadedAt is when the policy in force was loaded: at start, or by the
	// last successful reload.
	LoadedAt time.Time `json:"loaded_at,omitzero"`
	// Reloads counts successful reloads, ReloadErrors rejected ones, since
	// start; the load at start is neither.
	Reloads      uint64 `json:"reloads"`
	ReloadErrors uint64 `json:"reload_errors"`
	// LastReload is when a reload was last tried, accepted or not.
	LastReload time.Time `json:"last_reload,omitzero"`
	// LastError is why the last reload was rejected, while the last one
	// was; a successful reload clears it.
	LastError string `json:"last_error,omitempty"`
}

// Load returns the current policy. Flows call it once and decide with the
// result, so a reload never changes a decision halfway.
func (h *Holder) Load() *Policy { return h.cur.Load() }

// Store replaces the current policy with one that comes from no file (a
// built-in one).
func (h *Holder) Store(p *Policy) {
	h.smu.Lock()
	defer h.smu.Unlock()
	h.cur.Store(p)
	h.status.describe(p, "", p.ID(), true, time.Now())
	h.changed()
}

// Status returns the policy in force and the counts of reloads.
func (h *Holder) Status() Status {
	h.smu.Lock()
	defer h.smu.Unlock()
	return h.status
}

// LoadFile reads, parses and loads filename as the policy the appliance
// starts with. Unlike Reload it is not counted as a reload and does not
// compare the file with the policy it replaces.
func (h *Holder) LoadFile(filename string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, info, hash, err := readFile(filename)
	if err != nil {
		return err
	}
	h.smu.Lock()
	defer h.smu.Unlock()
	h.cur.Store(p)
	h.status.describe(p, filename, hash, info.defaultExplicit, time.Now())
	h.changed()
	return nil
}

// Reload reads and parses filename and makes it the current policy. On any
// error the current policy stays in force and the error is returned.
func (h *Holder) Reload(filename string) error { return h.ReloadChecked(filename, nil) }

// ErrImplicitAllow is the error of a reload refused because the file has
// no `default` key while the policy in force defaults to another action
// than allow: loading it would turn that into allow by omission.
var ErrImplicitAllow = errors.New("the file has no `default`, so unmatched flows would be allowed")

// ReloadChecked is Reload with a last check: a policy that parses but that
// check refuses (one the running appliance cannot carry out) is not loaded
// either. Nor is a file without a `default` key while the policy in force
// defaults to deny, bump or splice: a file cut short at a line boundary, or
// a `default` deleted by mistake, would otherwise load silently as
// allow-by-default. Writing `default: allow` says it is meant.
func (h *Holder) ReloadChecked(filename string, check func(*Policy) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, info, hash, err := readFile(filename)
	if err == nil && !info.defaultExplicit {
		if cur := h.cur.Load(); cur != nil && cur.DefaultAction() != Allow {
			err = fmt.Errorf("%s: %w instead of %s as now: write `default: allow` if that is meant", filename, ErrImplicitAllow, cur.DefaultAction())
		}
	}
	if err == nil && check != nil {
		err = check(p)
	}
	now := time.Now()
	h.smu.Lock()
	defer h.smu.Unlock()
	h.status.LastReload = now
	if err != nil {
		h.status.ReloadErrors++
		h.status.LastError = err.Error()
		return fmt.Errorf("policy: reload: %w", err)
	}
	h.cur.Store(p)
	h.status.describe(p, filename, hash, info.defaultExplicit, now)
	h.status.Reloads++
	h.status.LastError = ""
	h.changed()
	return nil
}

// readFile reads and parses a policy file, and hashes its bytes.
func readFile(filename string) (*Policy, parsed, string, error) {
	data, err := os.ReadFile(filename) // its error names the file
	if err != nil {
		return nil, parsed{}, "", err
	}
	p, info, err := parse(filename, data)
	if err != nil {
		return nil, parsed{}, "", err
	}
	return p, info, FileHash(data), nil
}

// FileHash is the short hash /stats and the logs name a policy file by:
// the first 12 hex digits of the SHA-256 of its bytes (sha256sum's first
// 12).
func FileHash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:6])
}

// Check reads and parses filename as a reload would, without loading it:
// for `gwlbproxy policy check`. defaultExplicit says whether the file has
// a `default` key; hash is FileHash of its bytes.
func Check(filename string) (p *Policy, defaultExplicit bool, hash string, err error) {
	p, info, hash, err := readFile(filename)
	return p, info.defaultExplicit, hash, err
}

// describe sets the fields of s that describe the policy in force.
func (s *Status) describe(p *Policy, file, hash string, defaultExplicit bool, at time.Time) {
	s.File, s.Hash, s.DefaultExplicit, s.LoadedAt = file, hash, defaultExplicit, at
	if p == nil { // denies everything
		s.Mode, s.Default, s.Rules = Enforce.String(), Deny.String(), 0
		return
	}
	s.Mode, s.Default, s.Rules = p.Mode().String(), p.DefaultAction().String(), p.Len()
}
