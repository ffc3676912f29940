//go:build !race

package quic

// raceEnabled: the race detector changes what allocations take (and a
// sync.Pool drops some of what it is given), so a test that measures
// memory or counts allocations skips under it.
const raceEnabled = false
