package proxy

import (
	"fmt"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Deny records of flows refused before any handshake (a forbidden
// destination, a decision on addresses alone, a denied UDP or echo flow) cost a
// client one packet each. Recorded one by one without bound, one client's
// flood would fill the records queue, so that other clients' records were
// dropped, the sinks fell behind and the health check failed for every
// VPC. So each client (as its shares count it) has a bucket of records:
// denyRecordBurst at once, refilled at denyRecordRate a second. A denial
// beyond it is counted (denied_unrecorded) but not recorded; the client's
// next recorded denial says how many went before it unrecorded.
const (
	denyRecordBurst = 100
	denyRecordRate  = 20 // a second
	// maxDenyClients bounds the buckets kept; clients beyond it share one.
	maxDenyClients = 1 << 16
)

type denyLimiter struct {
	mu       sync.Mutex
	m        map[shareKey]*denyBucket
	overflow denyBucket
	swept    time.Time // sweeps of a full map come at most once a second
}

type denyBucket struct {
	tokens  float64
	last    time.Time
	skipped int // denials not recorded since the last recorded one
}

// take reports whether a denial of client k at now may be recorded, and
// how many of the client's denials went unrecorded before it.
func (l *denyLimiter) take(k shareKey, now time.Time) (ok bool, skipped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[shareKey]*denyBucket)
	}
	b := l.m[k]
	if b == nil {
		if len(l.m) >= maxDenyClients && now.Sub(l.swept) >= time.Second {
			l.sweep(now)
			l.swept = now
		}
		if len(l.m) < maxDenyClients {
			b = &denyBucket{tokens: denyRecordBurst, last: now}
			l.m[k] = b
		} else {
			b = &l.overflow
		}
	}
	if now.After(b.last) { // callers' clocks were read before the lock
		b.tokens = min(denyRecordBurst, b.tokens+now.Sub(b.last).Seconds()*denyRecordRate)
		b.last = now
	}
	if b.tokens < 1 {
		b.skipped++
		return false, 0
	}
	b.tokens--
	skipped, b.skipped = b.skipped, 0
	if b == &l.overflow {
		skipped = 0 // other clients', not this one's: only in the counter
	}
	return true, skipped
}

// sweep forgets the buckets that have refilled: such a client starts
// afresh as if it had never been seen. What it owed its next record (how
// many went unrecorded) is dropped, and stays in the counter only: else a
// client that once ran dry and went quiet would keep its bucket for ever,
// and enough of them would fill the map for good.
func (l *denyLimiter) sweep(now time.Time) {
	for k, b := range l.m {
		if b.tokens+now.Sub(b.last).Seconds()*denyRecordRate >= denyRecordBurst {
			delete(l.m, k)
		}
	}
}

// denyEarly records a flow of client k refused before any handshake, as
// deny does, unless the client's bucket is empty: then it only counts it.
func (p *Proxy) denyEarly(r *records.Record, start time.Time, k shareKey, reason string) {
	ok, skipped := p.denies.take(k, start)
	if !ok {
		p.stats.denied.Add(1)
		p.stats.deniedUnrecorded.Add(1)
		return
	}
	if skipped > 0 {
		reason += fmt.Sprintf("; %d more refused from this client before this one, not recorded one by one", skipped)
	}
	p.deny(r, start, reason)
}
