package quic

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
)

// initialKeys protect a client's Initial packets for one version and one
// Destination Connection ID (RFC 9001 §5.2): AES-128-GCM for the payload and
// AES-128 for the header protection mask (§5.4.3).
type initialKeys struct {
	version uint32
	dcid    []byte // owned copy
	aead    cipher.AEAD
	iv      [12]byte
	hp      cipher.Block
}

// deriveKeys computes the client's Initial keys:
//
//	initial_secret = HKDF-Extract(salt, dcid)
//	client_secret  = HKDF-Expand-Label(initial_secret, "client in", "", 32)
//	key, iv, hp    = HKDF-Expand-Label(client_secret, "quic key"/"quic iv"/"quic hp", "", 16/12/16)
//
// with the version's salt and labels ("quicv2 key" and so on for v2).
func deriveKeys(version uint32, dcid []byte) (*initialKeys, error) {
	params, ok := paramsFor(version)
	if !ok {
		return nil, notQUICf("version %#08x", version)
	}
	initial, err := hkdfExtract(dcid, params.salt)
	if err != nil {
		return nil, fmt.Errorf("initial secret: %w", err)
	}
	client, err := expandLabel(initial, "client in", sha256.Size)
	if err != nil {
		return nil, err
	}
	key, err := expandLabel(client, params.keyLabel, 16)
	if err != nil {
		return nil, err
	}
	iv, err := expandLabel(client, params.ivLabel, 12)
	if err != nil {
		return nil, err
	}
	hpKey, err := expandLabel(client, params.hpLabel, 16)
	if err != nil {
		return nil, err
	}

	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("packet protection cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("packet protection AEAD: %w", err)
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil, fmt.Errorf("header protection cipher: %w", err)
	}
	k := &initialKeys{version: version, dcid: bytes.Clone(dcid), aead: aead, hp: hp}
	copy(k.iv[:], iv)
	return k, nil
}

// expandLabel is TLS 1.3's HKDF-Expand-Label (RFC 8446 §7.1) with an empty
// context, which is all QUIC's Initial key schedule uses.
func expandLabel(secret []byte, label string, length int) ([]byte, error) {
	const prefix = "tls13 "
	info := make([]byte, 0, 2+1+len(prefix)+len(label)+1)
	info = append(info, byte(length>>8), byte(length), byte(len(prefix)+len(label)))
	info = append(info, prefix...)
	info = append(info, label...)
	info = append(info, 0) // empty context
	out, err := hkdf.Expand(sha256.New, secret, string(info), length)
	if err != nil {
		return nil, fmt.Errorf("HKDF-Expand-Label %q: %w", label, err)
	}
	return out, nil
}

// maxCachedKeys bounds the key cache. A connection needs one or two entries
// (its original DCID, plus the one chosen by a Retry); the rest only absorb
// odd clients without deriving keys for every packet.
const maxCachedKeys = 8

// keyCache keeps derived keys, since derivation costs about as much as
// decrypting a packet.
type keyCache struct {
	entries []*initialKeys
	next    int // entry to replace when full
}

// get returns the keys for version and dcid, deriving (and caching) them
// when needed.
func (c *keyCache) get(version uint32, dcid []byte) (*initialKeys, error) {
	for _, k := range c.entries {
		if k.version == version && bytes.Equal(k.dcid, dcid) {
			return k, nil
		}
	}
	k, err := deriveKeys(version, dcid)
	if err != nil {
		return nil, err
	}
	if len(c.entries) < maxCachedKeys {
		c.entries = append(c.entries, k)
	} else {
		c.entries[c.next] = k
		c.next = (c.next + 1) % maxCachedKeys
	}
	return k, nil
}

// hkdfExtract is HKDF-Extract with SHA-256, the hash of QUIC's Initial
// cipher suite.
func hkdfExtract(secret, salt []byte) ([]byte, error) {
	return hkdf.Extract(sha256.New, secret, salt)
}
