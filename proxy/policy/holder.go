package policy

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// Holder holds the running policy for concurrent readers and swaps it on
// reload. The zero Holder is ready to use; Load returns nil until the first
// successful Reload or Store (and a nil *Policy denies everything).
type Holder struct {
	// mu serialises Reload, so that two reloads racing (two SIGHUPs) cannot
	// store an older file's policy after a newer one.
	mu  sync.Mutex
	cur atomic.Pointer[Policy]
}

// Load returns the current policy. Flows call it once and decide with the
// result, so a reload never changes a decision halfway.
func (h *Holder) Load() *Policy { return h.cur.Load() }

// Store replaces the current policy.
func (h *Holder) Store(p *Policy) { h.cur.Store(p) }

// Reload reads and parses filename and makes it the current policy. On any
// error the current policy stays in force and the error is returned.
func (h *Holder) Reload(filename string) error { return h.ReloadChecked(filename, nil) }

// ReloadChecked is Reload with a last check: a policy that parses but that
// check refuses (one the running appliance cannot carry out) is not loaded
// either.
func (h *Holder) ReloadChecked(filename string, check func(*Policy) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	data, err := os.ReadFile(filename)
	if err != nil {
		return fmt.Errorf("policy: reload: %w", err)
	}
	p, err := Parse(filename, data)
	if err == nil && check != nil {
		err = check(p)
	}
	if err != nil {
		return fmt.Errorf("policy: reload: %w", err)
	}
	h.cur.Store(p)
	return nil
}
