package certs

import (
	"container/list"
	"crypto/tls"
	"sync"
	"time"
)

// leafCache is a bounded LRU of minted leaves. Entries carry their own expiry
// so a leaf is dropped long before its NotAfter.
//
// Entries are kept, as certificates are judged, on the wall clock: a time
// from time.Now compared with another compares their monotonic readings,
// which a wall-clock step does not move and a hibernation stops, while
// the leaf's NotBefore and NotAfter are wall times. So a leaf outlived its
// NotAfter after a hibernation or a step forward of more than half its life,
// and after a step back one whose NotBefore was in the clients' future was
// still served.
type leafCache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front = most recently used; values are *cacheEntry
	items map[string]*list.Element
}

type cacheEntry struct {
	key     string
	cert    *tls.Certificate
	from    time.Time // wall clock: when it was minted; served from then on
	expires time.Time // wall clock: served until then
}

func newLeafCache(max int) *leafCache {
	return &leafCache{max: max, ll: list.New(), items: make(map[string]*list.Element, max)}
}

// get returns the cached leaf for key unless it is missing or, at now's wall
// clock, expired or not minted yet (the clock stepped back since); expired
// reports whether an entry was dropped for either.
func (c *leafCache) get(key string, now time.Time) (cert *tls.Certificate, expired bool) {
	now = now.Round(0) // the wall clock, as the leaf's validity
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) || now.Before(e.from) {
		c.ll.Remove(el)
		delete(c.items, key)
		return nil, true
	}
	c.ll.MoveToFront(el)
	return e.cert, false
}

// add stores a leaf, to be served from from until expires (wall-clock times),
// and returns how many entries were evicted to stay within the bound.
func (c *leafCache) add(key string, cert *tls.Certificate, from, expires time.Time) (evicted int) {
	from, expires = from.Round(0), expires.Round(0)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*cacheEntry)
		e.cert, e.from, e.expires = cert, from, expires
		c.ll.MoveToFront(el)
		return 0
	}
	c.items[key] = c.ll.PushFront(&cacheEntry{key: key, cert: cert, from: from, expires: expires})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
		evicted++
	}
	return evicted
}

func (c *leafCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
