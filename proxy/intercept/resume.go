package intercept

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// TLS session resumption, both ways.
//
// Towards origins, bumped connections keep their sessions in one bounded
// cache, keyed by the destination address and port and by the SNI (or,
// without one, the address crypto/tls keys it by), so a session is only
// ever offered again to the address and name it was made with. Resuming
// never skips verification: crypto/tls calls VerifyConnection on resumed
// connections too, with the certificates the session was made with, and
// the interceptor verifies them again there (chain, roots, expiry, name)
// as on a full handshake. A session is stored only when its connection's
// certificate verified: one a rule accepted unverified is never kept.
//
// Towards clients, the appliance issues session tickets (TLS 1.3 PSK and
// TLS 1.2 tickets) under keys of its own, shared by every bumped connection
// and rotated (ticketKeyRotation, ticketLifetime). crypto/tls binds no
// ticket to a name, so each ticket carries the name its leaf was minted for,
// and a ticket is accepted only on a connection whose leaf would be for the
// same name: a client can never resume a session for one name on a
// connection for another. Resuming a client's session changes only the
// client-facing handshake: the upstream handshake, its verification and the
// policy decision on the name come first, on every connection, as before.

// originSessionCacheSize bounds the upstream sessions kept: one per
// destination and name; sessioncache.go bounds their bytes.
const originSessionCacheSize = 1024

// Client-facing session tickets: a new key encrypts tickets every
// ticketKeyRotation, and a ticket is accepted for ticketLifetime after it
// was issued; keys are dropped once no ticket they encrypted can be.
const (
	ticketKeyRotation = time.Hour
	ticketLifetime    = 24 * time.Hour
)

// ticketBindingTag starts the ticket's Extra entry that names its leaf.
const ticketBindingTag = "gwlbproxy-ticket-v1\x00"

// resumption is what session resumption shares between connections.
type resumption struct {
	origins tls.ClientSessionCache // upstream sessions: see originSessions
	// server is the client-facing handshakes' configuration: each
	// connection gets its own from GetConfigForClient, and this one holds
	// the ticket keys they share.
	server *tls.Config
	keyLog io.Writer
	now    func() time.Time // replaced in tests

	mu      sync.Mutex
	keys    [][32]byte  // newest first, as the server config has them
	created []time.Time // of keys
}

func newResumption(keyLog io.Writer) *resumption {
	r := &resumption{
		origins: newSessionCache(originSessionCacheSize, originSessionCacheBytes), // sessioncache.go
		keyLog:  keyLog,
		now:     time.Now,
	}
	r.server = &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: r.configForClient}
	r.rotate()
	return r
}

// originSessions is one upstream connection's view of the shared session
// cache: crypto/tls's key (the SNI, or the remote address without one)
// prefixed with the destination dialled, so that a session is never offered
// to another address, and stores kept back until the connection's
// certificate has verified.
type originSessions struct {
	shared   tls.ClientSessionCache
	prefix   string // "dest|"
	verified atomic.Bool
}

// originSessions returns a session cache view for one connection to dest.
func (r *resumption) originSessions(dest netip.AddrPort) *originSessions {
	// An address and port never hold "|": the prefix ends at the first.
	return &originSessions{shared: r.origins, prefix: dest.String() + "|"}
}

// Get implements tls.ClientSessionCache.
func (o *originSessions) Get(key string) (*tls.ClientSessionState, bool) {
	return o.shared.Get(o.prefix + key)
}

// Put implements tls.ClientSessionCache: a session is kept only when the
// connection's certificate verified; removals always pass.
func (o *originSessions) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil && !o.verified.Load() {
		return
	}
	o.shared.Put(o.prefix+key, cs)
}

// clientHandshake is what a bumped client's handshake needs to know, handed
// to configForClient through the handshake's context.
type clientHandshake struct {
	leaf       *tls.Certificate
	name       string // the leaf's name: what its tickets are bound to
	upstreamH2 bool
}

type clientHandshakeKey struct{}

// configForClient presents the connection's leaf and takes, of the client's
// own ALPN offer, what both sides can carry: h2 when the upstream speaks
// it, and http/1.1. A client offering neither negotiates no ALPN (a fixed
// list with no overlap would make the handshake fail) and speaks HTTP/1.x.
func (r *resumption) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	h, _ := hello.Context().Value(clientHandshakeKey{}).(*clientHandshake)
	if h == nil {
		return nil, errors.New("no leaf for this handshake")
	}
	var protos []string
	for _, p := range hello.SupportedProtos {
		if p == "http/1.1" || (p == "h2" && h.upstreamH2) {
			protos = append(protos, p)
		}
	}
	return &tls.Config{
		Certificates: []tls.Certificate{*h.leaf}, NextProtos: protos, MinVersion: tls.VersionTLS12, KeyLogWriter: r.keyLog,
		WrapSession: func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			return r.wrap(h.name, cs, ss)
		},
		UnwrapSession: func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
			return r.unwrap(h.name, identity, cs), nil
		},
	}, nil
}

// wrap encrypts a session into a ticket bound to name.
func (r *resumption) wrap(name string, cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	now := r.rotate()
	b := make([]byte, 0, len(ticketBindingTag)+8+len(name))
	b = append(b, ticketBindingTag...)
	b = binary.BigEndian.AppendUint64(b, uint64(now.Unix()))
	b = append(b, name...)
	ss.Extra = append(ss.Extra, b)
	t, err := r.server.EncryptTicket(cs, ss)
	if err != nil {
		return nil, fmt.Errorf("session ticket: %w", err)
	}
	return t, nil
}

// unwrap returns the session a ticket holds, or nil (a full handshake)
// unless the ticket is ours, bound to name, and recent enough.
func (r *resumption) unwrap(name string, identity []byte, cs tls.ConnectionState) *tls.SessionState {
	ss, err := r.server.DecryptTicket(identity, cs)
	if err != nil || ss == nil {
		return nil
	}
	var binding []byte
	for _, e := range ss.Extra {
		if len(e) >= len(ticketBindingTag)+8 && string(e[:len(ticketBindingTag)]) == ticketBindingTag {
			if binding != nil {
				return nil // two bindings: not a ticket this code wrote
			}
			binding = e[len(ticketBindingTag):]
		}
	}
	if binding == nil || string(binding[8:]) != name {
		return nil
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(binding[:8])), 0)
	if age := r.now().Sub(issued); age < -time.Minute || age > ticketLifetime {
		return nil
	}
	return ss
}

// rotate makes sure a key younger than ticketKeyRotation encrypts new
// tickets and drops keys no acceptable ticket can have been encrypted
// with; it returns the time it went by.
func (r *resumption) rotate() time.Time {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.keys) > 0 && now.Sub(r.created[0]) < ticketKeyRotation {
		return now
	}
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		panic(fmt.Sprintf("session ticket key: %v", err)) // crypto/rand never fails on Linux
	}
	keys, created := [][32]byte{k}, []time.Time{now}
	for i, c := range r.created {
		if now.Sub(c) < ticketLifetime+ticketKeyRotation {
			keys, created = append(keys, r.keys[i]), append(created, c)
		}
	}
	r.keys, r.created = keys, created
	r.server.SetSessionTicketKeys(keys)
	return now
}

// withClientHandshake returns ctx carrying what configForClient needs.
func withClientHandshake(ctx context.Context, h *clientHandshake) context.Context {
	return context.WithValue(ctx, clientHandshakeKey{}, h)
}
