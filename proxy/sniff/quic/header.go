package quic

import "encoding/binary"

// Long header layout (RFC 9000 §17.2): first byte, 4-byte version, then the
// connection IDs with 1-byte lengths. Initial packets (§17.2.2) add a token;
// Initial, 0-RTT and Handshake packets then carry a Length covering the
// packet number and the protected payload.
const (
	headerFormLong = 0x80 // header form bit of the first byte
	typeBitsMask   = 0x30 // long packet type bits of the first byte
	longFixedLen   = 5    // first byte and version
	maxConnIDLen   = 20   // for v1 and v2 (RFC 9000 §17.2)
)

// longHeader is a parsed long header. The slices alias the packet.
type longHeader struct {
	version uint32
	typ     packetType
	dcid    []byte
	scid    []byte
	token   []byte
	// pnOffset is the offset of the (protected) packet number from the
	// start of the packet, and end the offset just past the packet: the
	// start of the next packet coalesced in the same datagram.
	pnOffset int
	end      int
}

// Version reports the version field of the long-header packet at the start
// of datagram. ok is false when datagram does not start with one: a short
// header (1-RTT) packet, or fewer than five bytes. The version may be any
// value, unsupported ones and 0 (Version Negotiation) included.
func Version(datagram []byte) (version uint32, ok bool) {
	if len(datagram) < longFixedLen || datagram[0]&headerFormLong == 0 {
		return 0, false
	}
	return binary.BigEndian.Uint32(datagram[1:5]), true
}

// IsInitial reports whether datagram holds a client's QUIC Initial packet
// of version 1 or 2 whose header fields are consistent with the datagram's
// length: first, or coalesced behind other long-header packets. A server
// reads on past a packet it cannot use (RFC 9000 §12.2), so an Initial
// behind a 0-RTT or Handshake packet starts a connection as surely as one
// in front. The walk ends at the first header that does not parse. It
// does not decrypt anything, and it does not require the 1200 bytes that
// RFC 9000 §14.1 asks of datagrams carrying a client's Initial:
// Assembler.Add enforces that, so that a short datagram is reported as
// malformed QUIC rather than as some other protocol.
func IsInitial(datagram []byte) bool {
	for off := 0; off < len(datagram); {
		h, err := parseLongHeader(datagram[off:])
		if err != nil {
			return false
		}
		if h.typ == typeInitial {
			return true
		}
		off += h.end // at least the fixed header: the walk moves on
	}
	return false
}

// parseLongHeader parses the long header at the start of b, which holds the
// packet and possibly more packets after it. Errors wrap ErrNotQUIC when b
// does not start with a long-header packet that a client of a supported
// version sends, and ErrMalformed when it does but the fields are invalid or
// run past the end of b.
func parseLongHeader(b []byte) (longHeader, error) {
	var h longHeader
	v, ok := Version(b)
	if !ok {
		return h, notQUICf("no long header")
	}
	params, ok := paramsFor(v)
	if !ok {
		return h, notQUICf("version %#08x", v)
	}
	h.version = v
	// The fixed bit (0x40) is deliberately not checked: RFC 9287 lets a
	// client clear it, even in Initial packets, when it resumes with a
	// token from a server that allowed that.
	h.typ = params.types[(b[0]&typeBitsMask)>>4]
	if h.typ == typeRetry {
		// Only servers send Retry packets, and they have no Length field.
		return h, notQUICf("Retry packet from a client")
	}

	p := longFixedLen
	var err error
	if h.dcid, p, err = connID(b, p, "destination"); err != nil {
		return h, err
	}
	if h.scid, p, err = connID(b, p, "source"); err != nil {
		return h, err
	}
	if h.typ == typeInitial {
		n, l, ok := readVarint(b[p:])
		if !ok {
			return h, malformedf("truncated token length")
		}
		p += l
		if n > uint64(len(b)-p) {
			return h, malformedf("token of %d bytes past the end of the datagram", n)
		}
		h.token = b[p : p+int(n)]
		p += int(n)
	}
	n, l, ok := readVarint(b[p:])
	if !ok {
		return h, malformedf("truncated Length field")
	}
	p += l
	if n > uint64(len(b)-p) {
		return h, malformedf("%s packet Length %d runs past the datagram's %d bytes", h.typ, n, len(b))
	}
	h.pnOffset = p
	h.end = p + int(n)
	return h, nil
}

// connID reads a connection ID with its 1-byte length at b[p:].
func connID(b []byte, p int, which string) ([]byte, int, error) {
	if p >= len(b) {
		return nil, p, malformedf("truncated %s connection ID length", which)
	}
	n := int(b[p])
	p++
	if n > maxConnIDLen {
		return nil, p, malformedf("%s connection ID of %d bytes", which, n)
	}
	if n > len(b)-p {
		return nil, p, malformedf("truncated %s connection ID", which)
	}
	return b[p : p+n], p + n, nil
}
