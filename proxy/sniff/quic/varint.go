package quic

// maxVarint is the largest value a QUIC variable-length integer can hold,
// and also the largest offset a stream (the CRYPTO stream included) may use
// (RFC 9000 §16, §19.6).
const maxVarint = 1<<62 - 1

// readVarint decodes a QUIC variable-length integer (RFC 9000 §16) from the
// start of b and returns it with its encoded length; ok is false when b ends
// first. Non-minimal encodings are accepted, as the RFC requires for
// everything but frame types.
func readVarint(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, false
	}
	v = uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n, true
}
