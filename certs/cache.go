package certs

import (
	"container/list"
	"crypto/tls"
	"sync"
	"time"
)

// leafCache is a bounded LRU of minted leaves. Entries carry their own expiry
// so a leaf is dropped long before its NotAfter.
type leafCache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front = most recently used; values are *cacheEntry
	items map[string]*list.Element
}

type cacheEntry struct {
	key     string
	cert    *tls.Certificate
	expires time.Time
}

func newLeafCache(max int) *leafCache {
	return &leafCache{max: max, ll: list.New(), items: make(map[string]*list.Element, max)}
}

// get returns the cached leaf for key unless it is missing or expired at now;
// expired reports whether an entry was dropped for being stale.
func (c *leafCache) get(key string, now time.Time) (cert *tls.Certificate, expired bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.ll.Remove(el)
		delete(c.items, key)
		return nil, true
	}
	c.ll.MoveToFront(el)
	return e.cert, false
}

// add stores a leaf and returns how many entries were evicted to stay within
// the bound.
func (c *leafCache) add(key string, cert *tls.Certificate, expires time.Time) (evicted int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*cacheEntry)
		e.cert, e.expires = cert, expires
		c.ll.MoveToFront(el)
		return 0
	}
	c.items[key] = c.ll.PushFront(&cacheEntry{key: key, cert: cert, expires: expires})
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
