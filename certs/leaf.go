package certs

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Defaults for MinterOptions fields left zero.
const (
	DefaultCacheSize    = 1024               // leaves kept in the cache
	DefaultLeafValidity = 7 * 24 * time.Hour // a leaf's lifetime from minting
	DefaultLeafBackdate = time.Hour          // NotBefore this far before minting
)

// maxLeafNames bounds the subject alternative names of one leaf. Mirrored
// upstream certificates rarely carry more than a hundred; the bound keeps a
// hostile upstream from making the appliance sign huge certificates.
const maxLeafNames = 500

// MinterOptions configures a Minter. The zero value is usable.
type MinterOptions struct {
	// CacheSize bounds the number of cached leaves; DefaultCacheSize if zero.
	CacheSize int
	// Validity is how long a leaf is valid from the moment it is minted;
	// DefaultLeafValidity if zero. Leaves never outlive the CA. Short-lived
	// leaves limit the damage of a leaked leaf key, and since they are minted
	// on demand there is nothing to renew by hand.
	Validity time.Duration
	// Backdate moves NotBefore into the past so clients whose clocks lag
	// the appliance accept a fresh leaf; DefaultLeafBackdate if zero.
	Backdate time.Duration
	// Logger receives debug records for each mint; slog.Default() if nil.
	Logger *slog.Logger
}

// Minter mints leaf certificates signed by a CA and caches them per set of
// names. It is safe for concurrent use; concurrent requests for the same
// names share one mint.
type Minter struct {
	ca       *CA
	validity time.Duration
	backdate time.Duration
	log      *slog.Logger
	now      func() time.Time // replaced in tests

	cache *leafCache
	group singleflight.Group

	hits, misses, mints, mintErrors  atomic.Uint64
	evictions, expired, invalidNames atomic.Uint64
}

// Stats are a Minter's counters since it was created, for /stats and
// /metrics.
type Stats struct {
	Hits         uint64 `json:"hits"`          // leaves served from the cache
	Misses       uint64 `json:"misses"`        // lookups that found no fresh leaf
	Mints        uint64 `json:"mints"`         // leaves signed
	MintErrors   uint64 `json:"mint_errors"`   // failed mints
	Evictions    uint64 `json:"evictions"`     // leaves dropped to respect the bound
	Expired      uint64 `json:"expired"`       // leaves dropped for age
	InvalidNames uint64 `json:"invalid_names"` // requests refused for a malformed name
	Cached       int    `json:"cached"`        // leaves in the cache now
	Capacity     int    `json:"capacity"`      // the cache bound
}

// NewMinter returns a Minter for ca.
func NewMinter(ca *CA, opts MinterOptions) (*Minter, error) {
	if ca == nil {
		return nil, errors.New("new minter: nil CA")
	}
	if opts.CacheSize < 0 || opts.Validity < 0 || opts.Backdate < 0 {
		return nil, errors.New("new minter: negative cache size, validity or backdate")
	}
	m := &Minter{
		ca:       ca,
		validity: cmp.Or(opts.Validity, DefaultLeafValidity),
		backdate: cmp.Or(opts.Backdate, DefaultLeafBackdate),
		log:      opts.Logger,
		now:      time.Now,
		cache:    newLeafCache(cmp.Or(opts.CacheSize, DefaultCacheSize)),
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	return m, nil
}

// Stats returns a snapshot of the counters.
func (m *Minter) Stats() Stats {
	return Stats{
		Hits:         m.hits.Load(),
		Misses:       m.misses.Load(),
		Mints:        m.mints.Load(),
		MintErrors:   m.mintErrors.Load(),
		Evictions:    m.evictions.Load(),
		Expired:      m.expired.Load(),
		InvalidNames: m.invalidNames.Load(),
		Cached:       m.cache.len(),
		Capacity:     m.cache.max,
	}
}

// Leaf returns a leaf certificate for one DNS name or IP address literal
// (which becomes an IP SAN). Names are compared case-insensitively and
// without a trailing dot. A wildcard ("*.example.com") is refused: the
// name comes from a client (the SNI), and a leaf never names more than the
// client asked for, whichever caller passes it. The returned certificate
// is shared: callers must not modify it.
func (m *Minter) Leaf(name string) (*tls.Certificate, error) {
	key, ip, err := nameKey(name, false)
	if err != nil {
		m.invalidNames.Add(1)
		return nil, err
	}
	if c := m.lookup(key); c != nil {
		return c, nil
	}
	return m.mintName(key, ip)
}

// Cached returns the fresh cached leaf for name, as Leaf would serve it,
// or nil (and no error) when the cache holds none: a lookup that never
// mints, counted as Leaf's is (a hit or a miss; an invalid name is an
// error). A caller that bounds the mints under way (the interceptor, whose
// clients choose the names) calls Mint after a miss, once it may mint:
// Cached then Mint is Leaf, with the caller's wait in between.
func (m *Minter) Cached(name string) (*tls.Certificate, error) {
	key, _, err := nameKey(name, false)
	if err != nil {
		m.invalidNames.Add(1)
		return nil, err
	}
	return m.lookup(key), nil
}

// Mint returns a leaf for name, as Leaf does after a miss, once Cached
// found none: it counts no lookup of its own (Cached counted the miss),
// and serves the leaf another caller minted for name meanwhile instead of
// minting it again.
func (m *Minter) Mint(name string) (*tls.Certificate, error) {
	key, ip, err := nameKey(name, false)
	if err != nil {
		m.invalidNames.Add(1)
		return nil, err
	}
	return m.mintName(key, ip)
}

// mintName mints the leaf for one name's key. The SAN lists are built only
// here, on a miss, so cache hits allocate nothing for DNS names.
func (m *Minter) mintName(key string, ip netip.Addr) (*tls.Certificate, error) {
	if ip.IsValid() {
		return m.mint(key, nil, []net.IP{ip.AsSlice()})
	}
	return m.mint(key, []string{key}, nil)
}

// LeafFor returns a leaf for several DNS names and IP addresses. The order
// of names and duplicates do not matter; IP literals among names become IP
// SANs; a DNS name may be a wildcard ("*.example.com"), as only LeafFor's
// callers choose. Whoever serves the leaf must have proved every name in it: the
// interceptor never mirrors an upstream certificate's names this way (a
// client without SNI gets Leaf for the address it dialled); tests use it
// to build certificates for several names.
func (m *Minter) LeafFor(names []string, ips []net.IP) (*tls.Certificate, error) {
	key, dns, addrs, err := namesKey(names, ips)
	if err != nil {
		m.invalidNames.Add(1)
		return nil, err
	}
	if c := m.lookup(key); c != nil {
		return c, nil
	}
	return m.mint(key, dns, addrs)
}

// lookup returns a fresh cached leaf and counts the hit or miss.
func (m *Minter) lookup(key string) *tls.Certificate {
	c, expired := m.cache.get(key, m.now())
	if expired {
		m.expired.Add(1)
	}
	if c == nil {
		m.misses.Add(1)
		return nil
	}
	m.hits.Add(1)
	return c
}

// mint signs a leaf for key, once for all concurrent callers.
func (m *Minter) mint(key string, dns []string, ips []net.IP) (*tls.Certificate, error) {
	v, err, _ := m.group.Do(key, func() (any, error) {
		// A flight for key may have finished between our lookup and Do;
		// its leaf is in the cache then, and minting again would waste it.
		if c, _ := m.cache.get(key, m.now()); c != nil {
			return c, nil
		}
		start := time.Now()
		cert, refresh, err := m.sign(dns, ips)
		if err != nil {
			m.mintErrors.Add(1)
			return nil, err
		}
		m.mints.Add(1)
		// Served from the leaf's own NotBefore, not the minting's moment:
		// a caller that read the clock before the minting did, and the
		// cache after it, took the leaf for one from a clock stepped back,
		// dropped it and minted again (a second leaf for one name, under a
		// loaded -race suite).
		if n := m.cache.add(key, cert, cert.Leaf.NotBefore, refresh); n > 0 {
			m.evictions.Add(uint64(n))
		}
		m.log.Debug("minted leaf certificate", "names", dns, "ips", ips,
			"not_after", cert.Leaf.NotAfter, "duration", time.Since(start))
		return cert, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

// sign creates a leaf and returns it with the time its cache entry
// should be dropped.
func (m *Minter) sign(dns []string, ips []net.IP) (cert *tls.Certificate, refresh time.Time, err error) {
	ca := m.ca
	now := m.now()
	if !now.Before(ca.notAfter) {
		return nil, time.Time{}, fmt.Errorf("mint leaf: CA expired at %s", ca.notAfter.UTC().Format(time.RFC3339))
	}
	notBefore := now.Add(-m.backdate)
	if notBefore.Before(ca.cert.NotBefore) {
		// Some verifiers reject a leaf that predates its issuer.
		notBefore = ca.cert.NotBefore
	}
	notAfter := now.Add(m.validity)
	if notAfter.After(ca.notAfter) {
		notAfter = ca.notAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("mint leaf key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("mint leaf: %w", err)
	}
	// Clients match SANs only; a CommonName still helps people reading the
	// certificate and very old clients. X.509 caps it at 64 characters.
	var cn string
	switch {
	case len(dns) > 0 && len(dns[0]) <= 64:
		cn = dns[0]
	case len(dns) == 0 && len(ips) > 0:
		cn = ips[0].String()
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		// ECDSA keys only sign; keyEncipherment belongs to RSA key exchange.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("mint leaf: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("mint leaf: parse: %w", err)
	}
	chain := make([][]byte, 0, 1+len(ca.intermediates))
	chain = append(chain, der)
	chain = append(chain, ca.intermediates...)
	// Serve a cached leaf for at most half of its remaining life, so every
	// leaf a client sees still has days left whatever its clock says.
	refresh = now.Add(notAfter.Sub(now) / 2)
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, refresh, nil
}

// nameKey normalises one DNS name or IP literal and returns its cache key.
// For an IP the key is "ip:" and the canonical address, and ip is set.
// wildcard allows a DNS name whose first label is "*".
func nameKey(name string, wildcard bool) (key string, ip netip.Addr, err error) {
	// Try an IP parse only for what could be one: a failed parse allocates
	// its error, which would cost every cache hit for a DNS name.
	if maybeIP(name) {
		a, err := netip.ParseAddr(name)
		if err != nil {
			return "", netip.Addr{}, fmt.Errorf("invalid IP address %q: %w", name, err)
		}
		if a.Zone() != "" {
			return "", netip.Addr{}, fmt.Errorf("IP address %q has a zone", name)
		}
		a = a.Unmap()
		return "ip:" + a.String(), a, nil
	}
	n, err := normalizeDNSName(name, wildcard)
	if err != nil {
		return "", netip.Addr{}, err
	}
	return n, netip.Addr{}, nil
}

// maybeIP reports whether s looks like an IP literal: it has a colon (only
// IPv6 literals do among names) or only digits and dots (IPv4). A DNS name
// cannot be all digits and dots, because top-level domains are not numeric.
func maybeIP(s string) bool {
	if s == "" {
		return false
	}
	if strings.IndexByte(s, ':') >= 0 {
		return true
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// namesKey normalises, de-duplicates and sorts names and IPs and returns the
// cache key: the DNS names joined by commas, then ",ip:<addr>" per address.
// A single DNS name gives the same key as Leaf(name). Commas and colons never
// occur in a valid DNS name, so keys cannot collide.
func namesKey(names []string, ips []net.IP) (key string, dns []string, addrs []net.IP, err error) {
	var ipSet []netip.Addr
	for _, n := range names {
		k, ip, err := nameKey(n, true)
		if err != nil {
			return "", nil, nil, err
		}
		if ip.IsValid() {
			ipSet = append(ipSet, ip)
		} else {
			dns = append(dns, k)
		}
	}
	for _, raw := range ips {
		a, ok := netip.AddrFromSlice(raw)
		if !ok {
			return "", nil, nil, fmt.Errorf("invalid IP address %v", raw)
		}
		ipSet = append(ipSet, a.Unmap())
	}
	slices.Sort(dns)
	dns = slices.Compact(dns)
	slices.SortFunc(ipSet, netip.Addr.Compare)
	ipSet = slices.Compact(ipSet)
	if len(dns)+len(ipSet) == 0 {
		return "", nil, nil, errors.New("no names or IP addresses for a leaf")
	}
	if len(dns)+len(ipSet) > maxLeafNames {
		return "", nil, nil, fmt.Errorf("%d names for one leaf, more than %d", len(dns)+len(ipSet), maxLeafNames)
	}
	var b strings.Builder
	b.WriteString(strings.Join(dns, ","))
	for _, a := range ipSet {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString("ip:")
		b.WriteString(a.String())
		addrs = append(addrs, a.AsSlice())
	}
	return b.String(), dns, addrs, nil
}

// normalizeDNSName lower-cases name, drops one trailing dot and checks that
// it is a plausible host name: labels of 1-63 letters, digits, hyphens or
// underscores, 253 characters at most, and, when wildcard allows it, "*"
// as a whole first label. SNI comes from clients, so nothing malformed may
// reach a certificate.
func normalizeDNSName(name string, wildcard bool) (string, error) {
	n := strings.TrimSuffix(name, ".")
	n = strings.ToLower(n) // returns n itself when already lower case
	if n == "" {
		return "", errors.New("empty name")
	}
	if len(n) > 253 {
		return "", fmt.Errorf("name of %d characters is longer than 253", len(n))
	}
	labelStart := 0
	for i := 0; i <= len(n); i++ {
		if i < len(n) && n[i] != '.' {
			c := n[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '*' && wildcard) {
				return "", fmt.Errorf("name %q has an invalid character %q", name, c)
			}
			continue
		}
		label := n[labelStart:i]
		switch {
		case label == "":
			return "", fmt.Errorf("name %q has an empty label", name)
		case len(label) > 63:
			return "", fmt.Errorf("name %q has a label longer than 63 characters", name)
		case strings.Contains(label, "*") && (label != "*" || labelStart != 0 || i == len(n)):
			return "", fmt.Errorf("name %q: a wildcard must be the whole first label of a longer name", name)
		}
		labelStart = i + 1
	}
	return n, nil
}
