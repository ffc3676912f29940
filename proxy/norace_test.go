//go:build !race

package proxy

// raceEnabled: the race detector changes what goroutines and allocations
// take, so a test that measures memory skips under it.
const raceEnabled = false
