//go:build race

package quic

// raceEnabled: see norace_test.go.
const raceEnabled = true
