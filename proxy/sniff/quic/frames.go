package quic

// Frame types allowed in Initial packets (RFC 9000 §12.4, Table 3). All are
// below 0x40, so their minimal encoding is a single byte; a longer encoding
// or any other type is a protocol violation in an Initial.
const (
	framePadding         = 0x00
	framePing            = 0x01
	frameAck             = 0x02
	frameAckECN          = 0x03
	frameCrypto          = 0x06
	frameConnectionClose = 0x1c // the transport variant; 0x1d is not allowed here
)

// cryptoFrame is the payload of a CRYPTO frame; data aliases the packet.
type cryptoFrame struct {
	offset uint64
	data   []byte
}

// parseFrames walks the frames of a decrypted Initial payload and appends
// its CRYPTO frames to out. The other allowed frames are checked for
// syntax and skipped.
func parseFrames(payload []byte, out []cryptoFrame) ([]cryptoFrame, error) {
	p := payload
	for len(p) > 0 {
		typ := p[0]
		p = p[1:]
		var err error
		switch typ {
		case framePadding:
			// PADDING usually fills the rest of the packet: skip the run at once.
			for len(p) > 0 && p[0] == framePadding {
				p = p[1:]
			}
		case framePing:
		case frameAck, frameAckECN:
			p, err = skipAck(p, typ == frameAckECN)
		case frameCrypto:
			var f cryptoFrame
			f, p, err = readCrypto(p)
			if err == nil {
				out = append(out, f)
			}
		case frameConnectionClose:
			p, err = skipConnectionClose(p)
		default:
			if typ >= 0x40 {
				// A multi-byte varint: an unknown type, or a known one not
				// minimally encoded, which RFC 9000 §12.4 lets us refuse.
				err = malformedf("frame type encoded in more than one byte (%#x...)", typ)
			} else {
				err = malformedf("frame type %#x is not allowed in an Initial packet", typ)
			}
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// varints reads n variable-length integers from p.
func varints(p []byte, vals []uint64) ([]byte, bool) {
	for i := range vals {
		v, l, ok := readVarint(p)
		if !ok {
			return p, false
		}
		vals[i] = v
		p = p[l:]
	}
	return p, true
}

// skipAck skips an ACK frame's body (RFC 9000 §19.3): Largest Acknowledged,
// ACK Delay, ACK Range Count, First ACK Range, the ranges, and for type 0x03
// three ECN counts. The range count is attacker-chosen, but every range
// consumes at least two bytes, so the loop ends with the payload.
func skipAck(p []byte, ecn bool) ([]byte, error) {
	var hdr [4]uint64
	p, ok := varints(p, hdr[:])
	if !ok {
		return p, malformedf("truncated ACK frame")
	}
	if hdr[3] > hdr[0] {
		return p, malformedf("ACK frame's first range %d exceeds largest acknowledged %d", hdr[3], hdr[0])
	}
	var r [2]uint64
	for n := hdr[2]; n > 0; n-- {
		if p, ok = varints(p, r[:]); !ok {
			return p, malformedf("truncated ACK range")
		}
	}
	if ecn {
		var counts [3]uint64
		if p, ok = varints(p, counts[:]); !ok {
			return p, malformedf("truncated ACK ECN counts")
		}
	}
	return p, nil
}

// readCrypto reads a CRYPTO frame's body (RFC 9000 §19.6): Offset, Length,
// data.
func readCrypto(p []byte) (cryptoFrame, []byte, error) {
	var hdr [2]uint64
	p, ok := varints(p, hdr[:])
	if !ok {
		return cryptoFrame{}, p, malformedf("truncated CRYPTO frame")
	}
	off, n := hdr[0], hdr[1]
	if n > uint64(len(p)) {
		return cryptoFrame{}, p, malformedf("CRYPTO frame of %d bytes with %d left in the packet", n, len(p))
	}
	if off+n > maxVarint { // both are below 2^62: no overflow
		return cryptoFrame{}, p, malformedf("CRYPTO frame ends past offset 2^62-1")
	}
	return cryptoFrame{offset: off, data: p[:n]}, p[n:], nil
}

// skipConnectionClose skips a transport CONNECTION_CLOSE frame's body
// (RFC 9000 §19.19): Error Code, Frame Type, Reason Phrase Length, reason.
func skipConnectionClose(p []byte) ([]byte, error) {
	var hdr [3]uint64
	p, ok := varints(p, hdr[:])
	if !ok {
		return p, malformedf("truncated CONNECTION_CLOSE frame")
	}
	if hdr[2] > uint64(len(p)) {
		return p, malformedf("CONNECTION_CLOSE reason of %d bytes with %d left in the packet", hdr[2], len(p))
	}
	return p[hdr[2]:], nil
}
