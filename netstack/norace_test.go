//go:build !race

package netstack

// raceEnabled: the race detector makes sync.Pool drop some of what it is
// given, so a test counting allocations of pooled paths skips under it.
const raceEnabled = false
