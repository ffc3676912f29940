package intercept

import (
	"bytes"
	"container/list"
	"crypto/tls"
	"sync"
	"time"
)

// The upstream session cache, bounded in bytes.
//
// A session crypto/tls keeps for resumption holds the origin's
// certificates, with its OCSP staple and SCTs, and each certificate's Raw
// is a slice of the whole certificate message it was parsed from, padding
// included. tls.NewLRUClientSessionCache bounds sessions in number only:
// an origin whose chain verifies (its own name's, from a public CA) and
// whose message is padded, at 1,024 destination ports or names, would keep
// 1,024 messages alive, 64 MiB at the size checkPresented lets through
// (256 MiB without it). So sessions are kept as their encoding
// (tls.SessionState.Bytes: the certificates themselves, no message
// around them) within originSessionCacheBytes in all, the least recently
// used dropped first, and decoded again when offered. Decoding costs a
// certificate parse only when no connection holds the certificates
// already (crypto/tls shares parsed certificates between connections),
// and a resumed handshake still saves the key exchange and the server's
// signature.

// originSessionCacheBytes bounds the bytes of the upstream sessions kept.
// An honest session is a few KiB (a chain of 3 to 5, a ticket, a staple):
// the 1,024 sessions originSessionCacheSize allows fit in 8 MiB.
const originSessionCacheBytes = 8 << 20

// sessionCache is a tls.ClientSessionCache bounded in sessions and bytes.
type sessionCache struct {
	maxEntries, maxBytes int

	mu    sync.Mutex
	bytes int
	lru   *list.List // of *storedSession, the most recently used first
	byKey map[string]*list.Element
}

// storedSession is a session as kept: its ticket and its encoding, and
// when it was stored.
type storedSession struct {
	key           string
	ticket, state []byte
	at            time.Time
}

// sessionPutEvery is how often a key's session may be replaced. crypto/tls
// puts every NewSessionTicket an origin sends, and encoding a session
// copies its whole chain and staple: an origin sending 16 tickets per byte
// of data (all crypto/tls allows in a row) would have the appliance encode
// a megabyte for every few hundred bytes it sent, where storing a pointer
// cost nothing. An honest origin sends one or two tickets per connection,
// at once; the first one kept resumes as well as the last.
const sessionPutEvery = time.Second

func (s *storedSession) size() int { return len(s.key) + len(s.ticket) + len(s.state) }

func newSessionCache(maxEntries, maxBytes int) *sessionCache {
	return &sessionCache{maxEntries: maxEntries, maxBytes: maxBytes, lru: list.New(), byKey: make(map[string]*list.Element)}
}

// Get implements tls.ClientSessionCache.
func (c *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	e, ok := c.byKey[key]
	if !ok {
		c.mu.Unlock()
		return nil, false
	}
	c.lru.MoveToFront(e)
	st := e.Value.(*storedSession)
	c.mu.Unlock()
	ss, err := tls.ParseSessionState(st.state)
	if err == nil {
		var cs *tls.ClientSessionState
		if cs, err = tls.NewResumptionState(st.ticket, ss); err == nil {
			return cs, true
		}
	}
	c.drop(st) // written by this same code: not expected
	return nil, false
}

// Put implements tls.ClientSessionCache: nil removes key's session.
func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	st := &storedSession{key: key, at: time.Now()}
	if cs != nil {
		c.mu.Lock()
		e, ok := c.byKey[key]
		recent := ok && st.at.Sub(e.Value.(*storedSession).at) < sessionPutEvery
		c.mu.Unlock()
		if recent {
			return
		}
		ticket, ss, err := cs.ResumptionState()
		if err == nil && ss != nil {
			if st.state, err = ss.Bytes(); err == nil {
				st.ticket = bytes.Clone(ticket) // a slice of the message it came in
			}
		}
	}
	c.keep(st)
}

// keep stores st in place of its key's session; st without a state, or
// bigger than the whole bound, only removes it.
func (c *sessionCache) keep(st *storedSession) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[st.key]; ok {
		c.removeLocked(e)
	}
	if st.state == nil || st.size() > c.maxBytes {
		return
	}
	c.byKey[st.key] = c.lru.PushFront(st)
	c.bytes += st.size()
	for c.bytes > c.maxBytes || c.lru.Len() > c.maxEntries {
		c.removeLocked(c.lru.Back())
	}
}

// drop removes st, unless another session replaced it.
func (c *sessionCache) drop(st *storedSession) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[st.key]; ok && e.Value.(*storedSession) == st {
		c.removeLocked(e)
	}
}

func (c *sessionCache) removeLocked(e *list.Element) {
	st := c.lru.Remove(e).(*storedSession)
	delete(c.byKey, st.key)
	c.bytes -= st.size()
}
