package proxy

// A response names its query's name as the server spelled it, and a server
// (or a middlebox) may spell it in another case than the client did: some
// normalise names to lower case. DNS names compare without regard to ASCII
// case (RFC 4343), and glibc's stub takes such an answer (res_nameinquery
// compares with ns_samename), so a pending query is kept under its name
// with A-Z folded to lower case, and an answer looked up so too: keyed by
// the name as spelled, such an answer matched nothing, and its query,
// answered, was recorded as a timeout. Only A-Z are folded, as RFC 4343
// has it: other bytes are a label's own. A length octet is never folded by
// mistake: a label is at most 63 bytes, below 'A'.
//
// But a client that randomises the case of its queries (DNS 0x20, as
// Unbound's use-caps-for-id) drops an answer that does not repeat its
// spelling byte for byte: that is its defence against forged answers. So
// the query keeps its spelling too (caseBits), and only an answer that
// repeats it is the query's own, the one handed to the destination check;
// one in another case is noted on the query and leaves it waiting for its
// own (dnsearly.go). Taken for the answer, a forgery in another case
// taught the check its address, and the real answer that followed, the one
// a 0x20 client took, answered no waiting query and taught nothing.

// caseBits marks the bytes of a name in wire form (at most 254) that are
// A-Z: with the name folded, they are its spelling.
type caseBits [4]uint64

// foldWire is a name in dnsMessage.Wire's form with A-Z lowered, and the
// bytes it lowered; a name with none to lower is returned as it is,
// without allocating.
func foldWire(wire string) (string, caseBits) {
	for i := 0; i < len(wire); i++ {
		if 'A' <= wire[i] && wire[i] <= 'Z' {
			b := []byte(wire)
			upper := foldWireBytes(b)
			return string(b), upper
		}
	}
	return wire, caseBits{}
}

// foldWireBytes lowers A-Z in b (at most 256 bytes), in place, and returns
// which bytes it lowered.
func foldWireBytes(b []byte) (upper caseBits) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
			upper[i>>6] |= 1 << (i & 63)
		}
	}
	return upper
}
