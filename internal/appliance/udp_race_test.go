//go:build race

package appliance

// raceEnabled: the race detector allows at most 8,128 goroutines alive at
// once, and each idle UDP flow has one.
const raceEnabled = true
