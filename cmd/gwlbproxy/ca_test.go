package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCASubcommandsRefuseStrayArguments: the flag package stops at the
// first argument that is not a flag, so without a check every flag after a
// stray word was dropped without a word: `ca init` wrote a CA without the
// --cn asked for, and `ca trust` printed the install commands of the
// state-dir CA rather than of the one --ca-cert named, for clients to trust
// the wrong CA. Both must refuse, as the appliance's own flags do, and write
// or print nothing.
func TestCASubcommandsRefuseStrayArguments(t *testing.T) {
	stateDir, other := t.TempDir(), t.TempDir()
	for _, dir := range []string{stateDir, other} {
		if err := runCA([]string{"init", "--out", dir}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
	}
	fresh := filepath.Join(t.TempDir(), "ca")
	for _, args := range [][]string{
		{"init", "--out", fresh, "stray", "--cn", "Mine"},
		{"trust", "--state-dir", stateDir, "x", "--ca-cert", filepath.Join(other, "ca.pem"), "--ca-key", filepath.Join(other, "ca-key.pem")},
	} {
		var out bytes.Buffer
		err := runCA(args, &out, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "unexpected argument") {
			t.Errorf("ca %q: %v, want an unexpected argument refused", args, err)
		}
		if out.Len() != 0 {
			t.Errorf("ca %q: printed %d bytes after a stray argument", args, out.Len())
		}
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Errorf("ca init with a stray argument wrote %s: %v", fresh, err)
	}
}
