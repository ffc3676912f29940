package proxy

// A response names its query's name as the server spelled it, and a server
// (or a middlebox) may spell it in another case than the client did: some
// normalise names to lower case. DNS names compare without regard to ASCII
// case (RFC 4343), and the client's stub takes such an answer (glibc's
// res_nameinquery compares with ns_samename), so a pending query is kept
// under its name with A-Z folded to lower case, and an answer looked up so
// too: keyed by the name as spelled, such an answer matched nothing, and
// its query, answered, was recorded as a timeout. Only A-Z are folded, as
// RFC 4343 has it: other bytes are a label's own. A length octet is never
// folded by mistake: a label is at most 63 bytes, below 'A'.

// foldWire is a name in dnsMessage.Wire's form with A-Z lowered; a name
// with none to lower is returned as it is, without allocating.
func foldWire(wire string) string {
	for i := 0; i < len(wire); i++ {
		if 'A' <= wire[i] && wire[i] <= 'Z' {
			b := []byte(wire)
			foldWireBytes(b[i:])
			return string(b)
		}
	}
	return wire
}

// foldWireBytes lowers A-Z in b, in place.
func foldWireBytes(b []byte) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
}
