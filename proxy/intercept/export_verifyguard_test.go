package intercept

import (
	"net/netip"
	"time"
)

// HoldVerifySlot takes one of a client's verification slots, as a
// verification under way would, and returns the function that gives it
// back.
func HoldVerifySlot(ic *Interceptor, endpoint string, client netip.Addr) func() {
	release, err := ic.slots.acquire(newClientKey(endpoint, client), 0)
	if err != nil {
		panic(err)
	}
	return release
}

// MaxClientVerifications is how many verifications a client may have
// under way at once.
const MaxClientVerifications = maxClientVerifications

// SetVerificationLimit sets how many verifications all clients together
// may have under way at once, in place of half of GOMAXPROCS.
func SetVerificationLimit(ic *Interceptor, n int) { ic.slots.limit = func() int { return n } }

// VerifyWaiting returns how many verifications and leaf mints wait for a
// slot.
func VerifyWaiting(ic *Interceptor) int {
	ic.slots.mu.Lock()
	defer ic.slots.mu.Unlock()
	return len(ic.slots.queue)
}

// AcquireVerifySlot takes one of a client's verification slots, waiting
// at most wait, as a verification or a leaf's mint does, and returns the
// function that gives it back.
func AcquireVerifySlot(ic *Interceptor, endpoint string, client netip.Addr, wait time.Duration) (func(), error) {
	return ic.slots.acquire(newClientKey(endpoint, client), wait)
}
