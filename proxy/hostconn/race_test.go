//go:build race

package hostconn_test

const raceEnabled = true
