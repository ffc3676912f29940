package proxy

import (
	"fmt"
	"sync"
	"sync/atomic"
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

// QUIC flows denied on their ClientHello's name (by a rule, for ECH, as
// bump, or by the destination check) cost a client one datagram each too,
// so they are bounded the same way, but from a bucket of their own: a
// client that spent its early-denial bucket on cheap refusals (one packet
// to a forbidden address) must not keep the name it was refused for out of
// the records. TLS denials are not bucketed: each costs a TCP handshake,
// which the packet stack bounds per client.
const (
	namedDenyRecordBurst = 100
	namedDenyRecordRate  = 20 // a second
)

// A dial that fails before its client's handshake is done costs the
// client one packet too: a SYN (the destination is dialled before the
// handshake is completed, tcp.go), or a UDP datagram whose destination
// answers port or host unreachable before anything else. Under a policy
// that lets a destination through by its address (default: allow, or a
// rule on the client's own host), a client sending single SYNs or
// datagrams to closed ports made a record of about 400 bytes for each,
// with no bound: the flood the early-denial bucket is there against. So
// such records come from a bucket per client too, of the same size, but a
// bucket of their own: a failed dial is no decision of the policy, and a
// client that spent its bucket on dials to closed ports must not keep the
// denials that follow out of the records, nor its denials a real failure.
// A dial that fails after the client's handshake and first bytes (a flow
// only a name could let through, dialled once its name is allowed) is not
// bucketed: like a TLS refusal, it costs a handshake first.
const (
	dialErrorRecordBurst = 100
	dialErrorRecordRate  = 20 // a second
)

// dialErrorBucketBytes is the most a client may have sent for a flow whose
// dial failed for that flow's record to come from the failed-dial bucket.
// The bucket is there against records made for the price of a packet
// each: 1-byte datagrams, a record of about 400 bytes for each (a
// refused udp flow's measured 396 to 398 bytes, TestDialErrorBucketNotForBigDatagrams;
// the bucket's note of those unrecorded adds about 130, up to 470 with
// four IPv6 hosts named, dialerrordests.go). A UDP flow's opening
// datagrams, though, reach the destination even when its port is closed
// (a capture there reads them; its kernel answers unreachable), and may be
// up to 64 KB each: from the bucket, a client that had spent it first sent
// data that left no record (review rev32a F1). So a flow whose client sent
// more than about a record's size is recorded as any other flow: its
// record costs the client at least as many bytes as it is long, so such
// records grow no faster than the traffic that buys them, and a client
// cannot make them cheaper than by sending the data itself. A QUIC
// Initial is at least 1,200 bytes: QUIC flows to closed ports are
// always recorded. A TCP dial is never above it: it is made on the SYN,
// and the stack reads no data before the handshake (a SYN's payload, if
// any, is never read, nor sent on), so its record's bytes_out is 0.
// Those within it deliver their bytes too: the bucket counts those it
// leaves unrecorded and says which hosts they went to (dialerrorowed.go).
const dialErrorBucketBytes = 512

// Allowed DNS makes one record per query, and a query is one datagram: a
// client could make records faster than the sinks take them, and fill the
// shared records queue. So a client's DNS records come from a bucket too.
// Real clients ask through a caching stub or resolver: a page load asks
// for a few dozen names (A, AAAA and HTTPS for each), and a busy host's
// cache misses come at tens a second. A burst of 200 and 50 a second cover
// that with room to spare, and bound one client to a small share of what a
// sink writes.
const (
	dnsRecordBurst = 200
	dnsRecordRate  = 50 // a second
)

// Requests denied inside an intercepted connection (by a rule, the
// destination check, or as malformed) cost an HTTP/2 client a few bytes
// each: a stream's HEADERS, which may name a long path and user agent from
// the HPACK table, and a RST_STREAM. Each made a deny record of hundreds of
// bytes, or thousands, before anything else was looked at, with no bound
// but how many streams a connection could open: the review's probe had one
// connection make 3,300 records a second, and 40 MB of records from 273
// KB of frames. So a client's deny records come from a bucket too, as big
// as the DNS one: a page whose blocked trackers are requested again and
// again makes dozens a second, not hundreds.
const (
	requestDenyRecordBurst = 200
	requestDenyRecordRate  = 50 // a second
)

// The trust page (intercept.Config.TrustHost) is answered from memory
// inside any bumped or h2c connection, and each request for it is an allow
// record: as cheap to make as a denied request's, with no upstream cost to
// slow it. So a client's trust-page records come from a bucket of their
// own, the same size: a person fetching the page and the CA makes a
// handful.
var trustPageRate = recordRate{requestDenyRecordBurst, requestDenyRecordRate}

// recordRate is the size of a bucket and its refill a second.
type recordRate struct{ burst, perSecond float64 }

var (
	earlyDenyRate = recordRate{denyRecordBurst, denyRecordRate}
	namedDenyRate = recordRate{namedDenyRecordBurst, namedDenyRecordRate}
	dnsQueryRate  = recordRate{dnsRecordBurst, dnsRecordRate}
	requestDeny   = recordRate{requestDenyRecordBurst, requestDenyRecordRate}
	dialErrorRate = recordRate{dialErrorRecordBurst, dialErrorRecordRate}
)

// denyLimiter holds the per-client buckets of records that a client can
// make for the price of one packet: early denials, QUIC denials made on a
// name, dials failed before a handshake, DNS queries, and requests denied
// inside intercepted connections.
type denyLimiter struct {
	early, named, dialErrors, dns, request, trust recordLimiter
	// dnsUnrecorded counts DNS queries whose record the client's bucket
	// had no room for; trustUnrecorded, trust-page requests.
	dnsUnrecorded, trustUnrecorded atomic.Uint64
}

// recordLimiter is one kind of bucket for every client. Its zero value is
// ready; the rate is the caller's, the same for every call.
type recordLimiter struct {
	mu       sync.Mutex
	m        map[shareKey]*denyBucket
	overflow denyBucket
	swept    time.Time // sweeps of a full map come at most once a second
	// unheld: failed dials are recorded at once, not held, from the
	// proxy's close on (flushDialOwedAll). The failed-dial limiter's only.
	unheld bool
}

type denyBucket struct {
	tokens  float64
	last    time.Time
	skipped int // records not made since the last one made
	// The failed-dial bucket's only (dialerrorowed.go): what the skipped
	// dials sent and where (dialerrordests.go, allocated at the first);
	// the last failed dial not recorded yet, and whether a timer will
	// write it.
	owed     *owedDests
	held     *records.Record
	flushing bool
}

// take reports whether a record of client k at now may be made, and how
// many of the client's records went unmade before it.
func (l *recordLimiter) take(k shareKey, now time.Time, r recordRate) (ok bool, skipped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(k, now, r)
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

// bucket returns client k's bucket (the overflow one when the map is
// full), refilled to now. l.mu is held.
func (l *recordLimiter) bucket(k shareKey, now time.Time, r recordRate) *denyBucket {
	if l.m == nil {
		l.m = make(map[shareKey]*denyBucket)
	}
	b := l.m[k]
	if b == nil {
		if len(l.m) >= maxDenyClients && now.Sub(l.swept) >= time.Second {
			l.sweep(now, r)
			l.swept = now
		}
		if len(l.m) < maxDenyClients {
			b = &denyBucket{tokens: r.burst, last: now}
			l.m[k] = b
		} else {
			b = &l.overflow
		}
	}
	b.refill(now, r)
	return b
}

// refill adds the tokens earned from b.last to now. The limiter's mu is
// held.
func (b *denyBucket) refill(now time.Time, r recordRate) {
	if now.After(b.last) { // callers' clocks were read before the lock
		b.tokens = min(r.burst, b.tokens+now.Sub(b.last).Seconds()*r.perSecond)
		b.last = now
	}
}

// sweep forgets the buckets that have refilled: such a client starts
// afresh as if it had never been seen. What it owed its next record (how
// many went unrecorded) is dropped, and stays in the counter only: else a
// client that once ran dry and went quiet would keep its bucket for ever,
// and enough of them would fill the map for good.
func (l *recordLimiter) sweep(now time.Time, r recordRate) {
	for k, b := range l.m {
		if b.held != nil {
			continue // its timer writes it within a token's refill
		}
		if b.tokens+now.Sub(b.last).Seconds()*r.perSecond >= r.burst {
			delete(l.m, k)
		}
	}
}

// denyEarly records a flow of client k refused before any handshake, as
// deny does, unless the client's bucket is empty: then it only counts it.
func (p *Proxy) denyEarly(r *records.Record, start time.Time, k shareKey, reason string) {
	p.denyLimited(&p.denies.early, earlyDenyRate, r, start, k, reason,
		"more refused from this client before this one")
}

// denyNamed records a QUIC flow of client k denied on its ClientHello's
// name, from the client's bucket of such denials, which cheap early
// denials do not draw on.
func (p *Proxy) denyNamed(r *records.Record, start time.Time, k shareKey, reason string) {
	p.denyLimited(&p.denies.named, namedDenyRate, r, start, k, reason,
		"more QUIC flows refused on their names from this client before this one")
}

func (p *Proxy) denyLimited(l *recordLimiter, rate recordRate, r *records.Record, start time.Time, k shareKey, reason, more string) {
	ok, skipped := l.take(k, start, rate)
	if !ok {
		p.stats.denied.Add(1)
		p.stats.deniedUnrecorded.Add(1)
		return
	}
	if skipped > 0 {
		reason += fmt.Sprintf("; %d %s, not recorded one by one", skipped, more)
	}
	p.deny(r, start, reason)
}

// denyRequestRecord is the interceptor's Config.DenyRecord: whether the
// record of rec, a request denied inside an intercepted connection, may be
// written, from its client's bucket, and how many of the client's went
// unrecorded before it. One that may not is counted in denied_unrecorded
// (the interceptor counts it denied).
func (p *Proxy) denyRequestRecord(rec *records.Record) (ok bool, skipped int) {
	ok, skipped = p.denies.request.take(recordShareKey(rec), time.Now(), requestDeny)
	if !ok {
		p.stats.deniedUnrecorded.Add(1)
	}
	return ok, skipped
}

// trustPageRecord is the interceptor's Config.TrustRecord: whether the
// record of rec, a request the trust page answered, may be written, from
// its client's bucket, and how many of the client's went unrecorded before
// it. One that may not is counted in trust_unrecorded.
func (p *Proxy) trustPageRecord(rec *records.Record) (ok bool, skipped int) {
	ok, skipped = p.denies.trust.take(recordShareKey(rec), time.Now(), trustPageRate)
	if !ok {
		p.denies.trustUnrecorded.Add(1)
	}
	return ok, skipped
}
