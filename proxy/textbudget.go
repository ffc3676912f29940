package proxy

import (
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// Allowed requests inside intercepted connections have no bucket of
// records, and must not: every request is recorded, its decision, host,
// method, status, result and bytes. But each record copied its path and
// User-Agent whole, as long as the client liked up to its head's bound
// (64 KiB), so records cost a client no more than the bytes it sent: the
// review's probe, one client pipelining GETs with 3-30 KB paths and a 1 KB
// User-Agent on one kept-alive cleartext connection, made 30-37 MB/s of
// records, rolling the default local chain (1 GiB x 7) in minutes and
// billing CloudWatch for 4-37 KB records. So the text a client chooses
// (path, user_agent, method: records.Record.ClientTextOver) is recorded
// whole only up to a budget in bytes per client: each record pays for what
// its fields hold past requestTextCut bytes each, and once the client's
// bucket cannot pay, those fields are cut to requestTextCut bytes, their
// start and their end with "…" between, and the record is marked
// truncated. The record itself is never dropped.
//
// Nearly every real request pays nothing: a browser's User-Agent is
// 100-250 bytes and its paths (without the query string, which records
// leave out) are shorter still. Those that do pay are the few with long
// paths (an image service's encoded parameters, a content-addressed
// file), a few hundred bytes each. 1 MiB a second is 4,000 requests a
// second each 256 bytes over, and the burst of 16 MiB 64,000 of them at
// once: an office of browsers behind one NAT address never spends it
// (one hostile host among them can, for all of them: a bucket is a
// client key's, an IPv4 address or an IPv6 prefix). A flood is then
// bound to that much whole text, plus at most 3 x 256 bytes of its own
// text in each record. The host and the error keep 4 x 256 bytes whole
// (records.Record.ClientTextOver): they are a name and the appliance's
// words, which fit, save where they quote what the client sent (a Host
// that cannot be read, a malformed body's line), which pays past that.
const (
	requestTextBurst = 16 << 20 // bytes of JSON past requestTextCut
	requestTextRate  = 1 << 20  // bytes a second
	// requestTextCut is what a cut field keeps: bytes of JSON, the "…"
	// included. A browser's User-Agent fits whole.
	requestTextCut = 256
)

// textBudget holds every client's bucket of request text recorded whole.
type textBudget struct {
	buckets recordLimiter
	// rate is requestTextRate's bucket, set by New (a test's smaller one
	// after it).
	rate recordRate
	// cut counts records whose fields were cut.
	cut atomic.Uint64
}

// requestText is the interceptor's Config.RequestText: it leaves rec, a
// record of an intercepted request or connection, whole if its client's
// text fits (requestTextCut bytes a field), or its bucket can pay for
// what goes past; else it cuts the fields, marks the record truncated and
// counts it in request_text_cut.
func (p *Proxy) requestText(rec *records.Record) {
	over := rec.ClientTextOver(requestTextCut)
	if over == 0 || p.text.spend(recordShareKey(rec), time.Now(), float64(over)) {
		return
	}
	rec.CutClientText(requestTextCut)
	p.text.cut.Add(1)
}

// spend takes n bytes from client k's bucket if it holds them, and
// reports whether it did. A record cut for want of them takes nothing:
// the bucket pays only for text recorded whole.
func (t *textBudget) spend(k shareKey, now time.Time, n float64) bool {
	l := &t.buckets
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(k, now, t.rate)
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}
