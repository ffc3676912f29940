//go:build !race

package intercept_test

// raceEnabled: the race detector changes what goroutines and allocations
// take, and slows the sessions past the rig's deadlines, so a test that
// measures memory skips under it.
const raceEnabled = false
