//go:build race

package intercept_test

// raceEnabled: see norace_test.go.
const raceEnabled = true
