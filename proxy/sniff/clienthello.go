package sniff

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// TLS wire constants (RFC 8446, RFC 6066, RFC 7301).
const (
	recordTypeChangeCipherSpec = 0x14
	recordTypeAlert            = 0x15
	recordTypeHandshake        = 0x16
	recordTypeApplicationData  = 0x17

	recordHeaderLen          = 5
	maxPlaintext             = 1 << 14 // TLSPlaintext.length limit
	handshakeHeaderLen       = 4
	handshakeTypeClientHello = 1

	extServerName        = 0
	extALPN              = 16
	extSupportedVersions = 43
	extECH               = 0xfe0d
)

// hidesName reports an extension that carries the real server name
// encrypted: RFC 9849's encrypted_client_hello, and the code points its
// drafts and draft ESNI used before it. Servers no longer accept those,
// but a client talking to a server of its own can still send them, and
// its real name is as hidden: `ech: deny` must see them, and the record
// say ech.
func hidesName(typ int) bool {
	switch {
	case typ == extECH,
		typ == 0xffce,                  // encrypted_server_name (ESNI, drafts 00-05)
		typ == 0xff02,                  // encrypted_client_hello (drafts 06-07)
		typ >= 0xfe08 && typ <= 0xfe0c: // encrypted_client_hello (drafts 08-12)
		return true
	}
	return false
}

// MaxClientHelloLen is the largest ClientHello body (the handshake message
// without its 4-byte header) that ParseClientHello accepts. The protocol
// allows 16 MiB; crypto/tls refuses handshake messages above 64 KiB, and so
// do we, so that a hostile length field can never make us reassemble (or ask
// the caller to buffer) more than that.
const MaxClientHelloLen = 1 << 16

// maxUselessRecords bounds the records in a row that carry no handshake
// bytes (alerts, change_cipher_spec, application data, empty records)
// before or between the ClientHello's fragments. Servers drop some such
// records and read on: crypto/tls drops up to 16 warning alerts in a row,
// OpenSSL up to 32 empty records. We skip whatever a server might, up to the
// larger of the two; a server refuses what we skip beyond its own limit.
const maxUselessRecords = 32

// isRecordType reports whether c is the content type of a TLS record
// (change_cipher_spec, alert, handshake, application_data): a stream whose
// first byte is one is TLS-like, whatever the record version says.
func isRecordType(c byte) bool {
	return c >= recordTypeChangeCipherSpec && c <= recordTypeApplicationData
}

// Sentinel errors. ParseClientHello returns an error that matches exactly one
// of ErrNeedMore, ErrNotTLS and ErrMalformed under errors.Is.
var (
	// ErrNeedMore means the input is a valid prefix so far and more bytes are
	// needed. The concrete error is a *NeedMoreError carrying the count.
	ErrNeedMore = errors.New("sniff: need more bytes")
	// ErrNotTLS means the bytes do not start a TLS handshake record.
	ErrNotTLS = errors.New("sniff: not a TLS handshake")
	// ErrMalformed means the bytes start a TLS handshake record but what
	// follows is not a well-formed ClientHello.
	ErrMalformed = errors.New("sniff: malformed TLS ClientHello")
)

// NeedMoreError is returned when the input ends before the message does,
// never wrapped by ParseClientHello and ParseHTTPRequest (so a type
// assertion finds it without the allocation errors.As costs). It matches
// ErrNeedMore under errors.Is.
type NeedMoreError struct {
	// Need is a lower bound on the total input length (counted from the
	// first byte, not in addition to what was given) that the next attempt
	// needs to make progress. For a ClientHello in a single record it is
	// exact once the record header is present.
	Need int
}

// Error says how many bytes are needed in total.
func (e *NeedMoreError) Error() string {
	return fmt.Sprintf("sniff: need more bytes: at least %d in total", e.Need)
}

// Is makes errors.Is(err, ErrNeedMore) true.
func (e *NeedMoreError) Is(target error) bool { return target == ErrNeedMore }

func needMore(n int) error { return &NeedMoreError{Need: n} }

func malformed(msg string) error { return fmt.Errorf("%w: %s", ErrMalformed, msg) }

// ClientHello holds what the proxy needs from a TLS ClientHello.
type ClientHello struct {
	// RecordVersion is the version field of the first record header
	// (commonly 0x0301 whatever the client supports; a hostile client can
	// write anything there, and the record may be one that was skipped).
	RecordVersion uint16
	// LegacyVersion is the ClientHello's legacy_version (client_version):
	// 0x0303 for TLS 1.2 and for TLS 1.3 clients. It is not checked: a
	// TLS 1.3 server negotiates from supported_versions alone.
	LegacyVersion uint16
	// SupportedVersions is the supported_versions extension in the client's
	// order, GREASE values included; nil when the extension is absent
	// (clients that offer nothing newer than TLS 1.2).
	SupportedVersions []uint16
	// ServerName is the SNI host_name, as sent (case kept; a trailing dot,
	// which some clients send, kept). Empty when the client sent no SNI.
	// It only ever holds letters, digits, '-', '_' and '.'.
	ServerName string
	// ALPN is the offered application protocols in order; nil when absent.
	ALPN []string
	// ECH reports an encrypted_client_hello extension: ServerName is then
	// the outer, public name, not the real destination.
	ECH bool
	// Size is the number of input bytes up to the end of the last record
	// carrying the ClientHello, headers and skipped records included.
	// Bytes after it are not examined.
	Size int
}

// MaxVersion returns the highest TLS version the client offers, ignoring
// GREASE values: the largest supported_versions entry, or LegacyVersion
// when that extension is absent.
func (h *ClientHello) MaxVersion() uint16 {
	var v uint16
	for _, sv := range h.SupportedVersions {
		if !isGREASE(sv) && sv > v {
			v = sv
		}
	}
	if v == 0 {
		v = h.LegacyVersion
	}
	return v
}

// isGREASE reports RFC 8701 reserved values (0x0a0a, 0x1a1a, … 0xfafa).
func isGREASE(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }

func be16(b []byte) int { return int(b[0])<<8 | int(b[1]) }

// ParseClientHello parses a TLS ClientHello from the start of b: the
// handshake records that carry it (the message may be fragmented over
// several records, even its 4-byte header), and before and between them any
// records a server would drop and read past: alerts, change_cipher_spec,
// application data and empty records, at most maxUselessRecords in a row.
// Bytes after the records that carry the message are ignored.
//
// It reads as leniently as the most lenient server it knows, so that what a
// server accepts as a ClientHello is one here too, with the same SNI: any
// record version (crypto/tls takes any below 0x1000 in the first records,
// OpenSSL 0x0300–0x03ff), any legacy_version, session IDs up to 255 bytes,
// and empty cipher suite and compression lists. A skipped record that a
// server refuses (a fatal alert) ends the handshake there, so skipping it
// can never make us read a name the server does not.
//
// The error tells three cases apart: ErrNotTLS (the first byte is not a TLS
// record type), a *NeedMoreError matching ErrNeedMore (b is a prefix of what
// could still be a ClientHello), and ErrMalformed (it is TLS-like but not a
// well-formed ClientHello, or one larger than MaxClientHelloLen). The first
// byte alone decides "TLS-like": 0x14–0x17, see isRecordType.
//
// Every length is checked against the bytes present, so hostile input can
// neither panic nor make it allocate more than len(b): a fragmented message
// is reassembled only once all its records are in b.
func ParseClientHello(b []byte) (ClientHello, error) {
	if len(b) < 1 {
		return ClientHello{}, needMore(recordHeaderLen)
	}
	if !isRecordType(b[0]) {
		return ClientHello{}, ErrNotTLS
	}

	// Pass 1: walk the records until they hold the whole handshake message,
	// validating every header, without copying anything.
	var (
		hdr     [handshakeHeaderLen]byte // the handshake header, gathered across records
		got     int                      // handshake bytes in the complete records walked so far
		msgLen  = -1                     // handshake message length incl. header, once known
		off     int                      // offset of the record being examined
		first   = -1                     // offset of the first record with handshake bytes
		frags   int                      // records with handshake bytes
		useless int                      // records without, in a row
	)
	for {
		// The type is checked as soon as it is there: a stream that stops
		// being TLS is told without waiting for a whole header.
		if off < len(b) && !isRecordType(b[off]) {
			return ClientHello{}, malformed(fmt.Sprintf("record of type %d before the end of the ClientHello", b[off]))
		}
		if len(b)-off < recordHeaderLen {
			return ClientHello{}, needMore(off + recordHeaderLen)
		}
		rh := b[off : off+recordHeaderLen]
		// The record version is not checked: servers accept nearly any in
		// the first records, and a client can write what it likes there.
		n := be16(rh[3:5])
		if n > maxPlaintext {
			return ClientHello{}, malformed(fmt.Sprintf("record length %d exceeds 2^14", n))
		}
		start, end := off+recordHeaderLen, off+recordHeaderLen+n
		if rh[0] != recordTypeHandshake || n == 0 {
			// No handshake bytes: a record a server drops (a warning alert,
			// an empty record) or refuses (anything else), never one it
			// reads a ClientHello from.
			if useless++; useless > maxUselessRecords {
				return ClientHello{}, malformed(fmt.Sprintf("more than %d records in a row without handshake data", maxUselessRecords))
			}
			if end > len(b) {
				return ClientHello{}, needMore(end)
			}
			off = end
			continue
		}
		useless = 0
		frag := b[start:min(end, len(b))]

		// Gather the handshake header from whatever is present, so a wrong
		// message type or an oversized length is reported before we ask for
		// (and the caller buffers) the rest.
		for i := 0; i < len(frag) && got+i < handshakeHeaderLen; i++ {
			hdr[got+i] = frag[i]
		}
		if got+len(frag) >= 1 && hdr[0] != handshakeTypeClientHello {
			return ClientHello{}, malformed(fmt.Sprintf("handshake type %d, want ClientHello", hdr[0]))
		}
		if msgLen < 0 && got+len(frag) >= handshakeHeaderLen {
			bodyLen := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
			if bodyLen > MaxClientHelloLen {
				return ClientHello{}, malformed(fmt.Sprintf("ClientHello of %d bytes exceeds the %d-byte limit", bodyLen, MaxClientHelloLen))
			}
			msgLen = handshakeHeaderLen + bodyLen
		}
		if end > len(b) {
			return ClientHello{}, needMore(end)
		}
		if first < 0 {
			first = off
		}
		got += n
		frags++
		off = end
		if msgLen >= 0 && got >= msgLen {
			break
		}
	}

	// Pass 2: get the message contiguous. The common case, one record, is
	// parsed in place; otherwise copy the fragments (bounded by len(b)).
	var msg []byte
	if frags == 1 {
		msg = b[first+recordHeaderLen : first+recordHeaderLen+msgLen]
	} else {
		msg = make([]byte, 0, msgLen)
		for p := first; len(msg) < msgLen; {
			n := be16(b[p+3 : p+5])
			if b[p] == recordTypeHandshake {
				frag := b[p+recordHeaderLen : p+recordHeaderLen+n]
				msg = append(msg, frag[:min(len(frag), msgLen-len(msg))]...)
			}
			p += recordHeaderLen + n
		}
	}

	h, err := parseClientHelloBody(msg[handshakeHeaderLen:])
	if err != nil {
		return ClientHello{}, err
	}
	h.RecordVersion = uint16(be16(b[1:3]))
	h.Size = off
	return h, nil
}

// cursor reads big-endian fields and length-prefixed vectors; every method
// reports false instead of reading past the end.
type cursor []byte

func (c *cursor) u8() (int, bool) {
	if len(*c) < 1 {
		return 0, false
	}
	v := int((*c)[0])
	*c = (*c)[1:]
	return v, true
}

func (c *cursor) u16() (int, bool) {
	if len(*c) < 2 {
		return 0, false
	}
	v := be16(*c)
	*c = (*c)[2:]
	return v, true
}

func (c *cursor) bytes(n int) ([]byte, bool) {
	if n < 0 || len(*c) < n {
		return nil, false
	}
	v := (*c)[:n]
	*c = (*c)[n:]
	return v, true
}

// vec8 and vec16 read a vector with a 1- or 2-byte length prefix.
func (c *cursor) vec8() (cursor, bool) {
	n, ok := c.u8()
	if !ok {
		return nil, false
	}
	v, ok := c.bytes(n)
	return cursor(v), ok
}

func (c *cursor) vec16() (cursor, bool) {
	n, ok := c.u16()
	if !ok {
		return nil, false
	}
	v, ok := c.bytes(n)
	return cursor(v), ok
}

// parseClientHelloBody reads the fields the proxy needs. Where RFC 8446
// is stricter than crypto/tls (a legacy_version other than 3.x, a session
// ID over 32 bytes, empty cipher suite or compression lists), it is as
// lenient as crypto/tls, which reads the SNI of such a hello and hands it
// to the server's callbacks: refusing what a server accepts would deny
// clients for nothing. Like crypto/tls and OpenSSL, it refuses bytes after
// the data of the extensions it reads.
func parseClientHelloBody(body []byte) (ClientHello, error) {
	var h ClientHello
	c := cursor(body)
	v, ok := c.u16()
	if !ok {
		return h, malformed("truncated legacy_version")
	}
	h.LegacyVersion = uint16(v)
	if _, ok := c.bytes(32); !ok {
		return h, malformed("truncated random")
	}
	if _, ok := c.vec8(); !ok {
		return h, malformed("bad legacy_session_id")
	}
	suites, ok := c.vec16()
	if !ok || len(suites)%2 != 0 {
		return h, malformed("bad cipher_suites")
	}
	if _, ok := c.vec8(); !ok {
		return h, malformed("bad legacy_compression_methods")
	}
	if len(c) == 0 {
		return h, nil // no extensions: legal up to TLS 1.2
	}
	exts, ok := c.vec16()
	if !ok || len(c) != 0 {
		return h, malformed("bad extensions length")
	}
	var seenSNI, seenALPN, seenVersions bool
	for len(exts) > 0 {
		typ, ok1 := exts.u16()
		data, ok2 := exts.vec16()
		if !ok1 || !ok2 {
			return h, malformed("truncated extension")
		}
		// A duplicated extension is illegal (RFC 8446 §4.2); for the ones we
		// read it would also let a client show us one name and the server
		// another, so reject rather than pick one.
		switch typ {
		case extServerName:
			if seenSNI {
				return h, malformed("duplicate server_name extension")
			}
			seenSNI = true
			name, err := parseSNI(data)
			if err != nil {
				return h, err
			}
			h.ServerName = name
		case extALPN:
			if seenALPN {
				return h, malformed("duplicate ALPN extension")
			}
			seenALPN = true
			protos, err := parseALPN(data)
			if err != nil {
				return h, err
			}
			h.ALPN = protos
		case extSupportedVersions:
			if seenVersions {
				return h, malformed("duplicate supported_versions extension")
			}
			seenVersions = true
			list, ok := data.vec8()
			if !ok || len(data) != 0 || len(list) < 2 || len(list)%2 != 0 {
				return h, malformed("bad supported_versions extension")
			}
			h.SupportedVersions = make([]uint16, len(list)/2)
			for i := range h.SupportedVersions {
				h.SupportedVersions[i] = uint16(be16(list[2*i:]))
			}
		default:
			if hidesName(typ) {
				h.ECH = true
			}
		}
	}
	return h, nil
}

// parseSNI returns the host_name from a server_name extension (RFC 6066 §3).
// An empty extension (as a server sends it) is not valid from a client.
func parseSNI(data cursor) (string, error) {
	list, ok := data.vec16()
	if !ok || len(data) != 0 || len(list) == 0 {
		return "", malformed("bad server_name extension")
	}
	var name string
	for len(list) > 0 {
		typ, ok1 := list.u8()
		v, ok2 := list.vec16()
		if !ok1 || !ok2 {
			return "", malformed("truncated server_name entry")
		}
		if typ != 0 {
			continue // not host_name; none other is defined
		}
		if name != "" {
			return "", malformed("more than one host_name")
		}
		if !validHostName(v) {
			return "", malformed("invalid host_name " + quoteCut(v))
		}
		name = string(v)
	}
	return name, nil
}

// validHostName accepts what a DNS name in SNI can hold: letters, digits,
// '-', '_' and '.', with no empty label (EmptyLabel), at most 253 bytes
// without one trailing dot, labels of at most 63 (RFC 1035, and what the
// bump's leaf minter takes: certs.normalizeDNSName; a longer name was
// sent upstream and then failed the mint, recorded as a denial by the
// rule that allowed it).
// Anything else (NUL, spaces, '/', ':', non-ASCII) would only serve to
// confuse logging or name matching. crypto/tls hands such names to the
// server as they are; we report the hello as malformed instead, and the
// proxy refuses it as unreadable.
//
// A name of digits and dots alone is no DNS name (no top-level domain is
// numeric): it is accepted only as an IPv4 literal ("1.2.3.4"), which a
// bump's leaf names as an address. Any other ("123", "1.2.3", "01.2.3.4",
// "1.2.3.4.") no leaf can be minted for, and taken as a name it failed a
// bump only after the upstream handshake had sent it.
func validHostName(b []byte) bool {
	if len(b) == 0 || EmptyLabel(b) {
		return false
	}
	if n := bytes.TrimSuffix(b, []byte(".")); len(n) > 253 {
		return false
	}
	numeric, label := true, 0
	for _, c := range b {
		if label++; c == '.' {
			label = 0
		} else if label > 63 {
			return false
		}
		switch {
		case '0' <= c && c <= '9', c == '.':
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '-', c == '_':
			numeric = false
		default:
			return false
		}
	}
	if numeric {
		a, err := netip.ParseAddr(string(b)) // digits and dots: IPv4 or nothing
		return err == nil && a.Is4()
	}
	return true
}

// EmptyLabel reports whether the host name has an empty label: it starts
// with a dot, holds two dots in a row, or is a lone dot. One trailing dot
// (the root, "example.com.") is no empty label. Rules compare names with
// one trailing dot ignored, so "bad.example.." would not meet a rule for
// bad.example, while a resolver or server may read it as that name; and
// ".evil.example" or "a..evil.example" are no names at all. Such a name
// is refused where it is read (SNI, HTTP Host and :authority). The empty
// name has no label and is not reported.
func EmptyLabel[S ~string | ~[]byte](name S) bool {
	for i := 0; i < len(name); i++ {
		if name[i] == '.' && (i == 0 || name[i-1] == '.') {
			return true
		}
	}
	return false
}

// parseALPN returns the protocol list of an ALPN extension (RFC 7301 §3.1).
// It allocates one string for the whole list and slices it, so a list of
// many tiny names costs one string plus one slice header each.
func parseALPN(data cursor) ([]string, error) {
	list, ok := data.vec16()
	if !ok || len(data) != 0 || len(list) < 2 {
		return nil, malformed("bad ALPN extension")
	}
	n := 0
	for p := list; len(p) > 0; n++ {
		v, ok := p.vec8()
		if !ok || len(v) == 0 {
			return nil, malformed("bad ALPN protocol name")
		}
	}
	all := string(list)
	protos := make([]string, 0, n)
	for i := 0; i < len(all); {
		l := int(all[i])
		protos = append(protos, all[i+1:i+1+l])
		i += 1 + l
	}
	return protos, nil
}

// quoteCut quotes b, a client's bytes, for an error: whole when short,
// else its first and last quoteKeep bytes and its length. An invalid
// host_name can be as long as the ClientHello (64 KiB), and quoted whole
// it made up to 256 KB of the error its connection's deny record keeps,
// outside any client's budget of text.
func quoteCut(b []byte) string {
	if len(b) <= 2*quoteKeep {
		return strconv.Quote(string(b))
	}
	return fmt.Sprintf("%q…%q (%d bytes)", b[:quoteKeep], b[len(b)-quoteKeep:], len(b))
}

// quoteKeep is how many bytes of each end quoteCut keeps.
const quoteKeep = 32
