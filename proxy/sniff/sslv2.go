package sniff

import (
	"errors"
	"fmt"
)

// ErrSSLv2Hello means the client sent an SSLv2-format ClientHello (RFC 5246
// appendix E.2) offering TLS. It has no extensions, so no SNI or ALPN to
// decide on, yet OpenSSL servers still answer it with a TLS ServerHello:
// relayed as opaque bytes it would open an encrypted channel past every
// rule about names. Sniff reports it as KindTLS with this error, an
// unreadable ClientHello.
var ErrSSLv2Hello = errors.New("sniff: SSLv2-format ClientHello, which carries no SNI")

// Offsets in an SSLv2-format ClientHello: a 2-byte record header (high bit
// set, then a 15-bit length), msg_type 1, version, then the lengths of the
// cipher specs, session ID and challenge, then those three.
const (
	sslv2Type      = 2  // msg_type, SSL2_MT_CLIENT_HELLO = 1
	sslv2Major     = 3  // version major: 3 or above for a client that offers SSL 3 or TLS
	sslv2Fixed     = 11 // header and fixed fields, up to the challenge length
	sslv2MinLength = 9  // record length of the fixed fields (OpenSSL's MIN_SSL2_RECORD_LEN)
	maxSessionID   = 32
)

// sslv2Hello checks buf against the shape of an SSLv2-format ClientHello
// that some TLS server accepts: a 2-byte header with the high bit set and
// a record length that covers at least the fixed fields plus the cipher
// specs, session ID and challenge; msg_type 1; version 3.x or above;
// cipher specs a non-zero multiple of 3 bytes; a session ID of at most 32
// bytes; a challenge of any length (OpenSSL 3.0 takes an empty one).
// OpenSSL refuses a record that holds bytes after the challenge, and a
// version major above 3, but OpenJDK's SSLServerSocket (SSLv2Hello
// enabled) answers both with a TLS ServerHello, negotiating down from the
// higher version: OpenSSL's exact checks would leave it a channel past the
// rules about names. No other bytes are checked, as servers check none.
// It decides on the fixed fields alone, never waiting for the rest of the
// record (up to 32 KiB, as long as the client likes): it returns match
// once the first 11 bytes fit, or need > len(buf) when the bytes so far
// fit and the next ones decide; neither when a byte rules it out.
func sslv2Hello(buf []byte) (match bool, need int) {
	if len(buf) == 0 || buf[0]&0x80 == 0 {
		return false, 0
	}
	// Ask for the bytes up to the next field that can rule it out, so
	// that binary protocols whose first byte has its high bit set wait
	// no longer than they must.
	for _, n := range [...]int{2, sslv2Type + 1, sslv2Major + 1, sslv2Fixed} {
		if len(buf) < n {
			return false, n
		}
		switch n {
		case 2:
			if length := int(buf[0]&0x7f)<<8 | int(buf[1]); length < sslv2MinLength {
				return false, 0
			}
		case sslv2Type + 1:
			if buf[sslv2Type] != 1 {
				return false, 0
			}
		case sslv2Major + 1:
			if buf[sslv2Major] < 3 {
				return false, 0
			}
		}
	}
	length := int(buf[0]&0x7f)<<8 | int(buf[1])
	specs := int(buf[5])<<8 | int(buf[6])
	session := int(buf[7])<<8 | int(buf[8])
	challenge := int(buf[9])<<8 | int(buf[10])
	ok := specs > 0 && specs%3 == 0 && session <= maxSessionID &&
		length >= sslv2MinLength+specs+session+challenge
	return ok, 0
}

// classifySSLv2 classifies buf, whose first byte has its high bit set: an
// SSLv2-format ClientHello is KindTLS with ErrSSLv2Hello; one cut short
// once its message type and version major are in (the counterpart of three
// bytes of a TLS record) is KindTLS with the reason; the rest is KindOther.
func classifySSLv2(res Result, buf []byte, stop error) (Result, int) {
	match, need := sslv2Hello(buf)
	switch {
	case match:
		res.Kind, res.Err = KindTLS, ErrSSLv2Hello
	case need == 0:
	case stop == nil:
		return res, need
	case len(buf) > sslv2Major:
		res.Kind = KindTLS
		res.Err = fmt.Errorf("incomplete SSLv2-format ClientHello (%d of %d bytes): %w", len(buf), need, stop)
	}
	return res, 0
}
