//go:build race

package netstack

// raceEnabled: see norace_test.go.
const raceEnabled = true
