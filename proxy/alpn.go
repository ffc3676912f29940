package proxy

import "strings"

// alpnList writes a client's ALPN offer as a record's alpn: the protocol
// names joined with commas. A name may hold any byte (RFC 7301), so a
// comma, a backslash and any byte outside printable ASCII inside one is
// written \DDD, as query_name writes its bytes: the one-name offer
// "h2,http/1.1" must not read as a browser's two-name offer to anything
// keyed on the field (review r1s28 F3), nor "h2\xff" as "h2\xfe" (both
// were U+FFFD in the JSON: review r5s28 F3).
func alpnList(protos []string) string {
	n, plain := 0, true
	for _, p := range protos {
		n += len(p) + 1
		for i := 0; i < len(p) && plain; i++ {
			plain = plainALPNByte(p[i])
		}
	}
	if plain {
		return strings.Join(protos, ",")
	}
	b := make([]byte, 0, n+8)
	for i, p := range protos {
		if i > 0 {
			b = append(b, ',')
		}
		for j := 0; j < len(p); j++ {
			if c := p[j]; plainALPNByte(c) {
				b = append(b, c)
			} else {
				b = append(b, '\\', '0'+c/100, '0'+c/10%10, '0'+c%10)
			}
		}
	}
	return string(b)
}

// plainALPNByte reports whether a protocol name's byte is recorded as it
// is: printable ASCII but the comma and the backslash.
func plainALPNByte(c byte) bool {
	return '!' <= c && c <= '~' && c != ',' && c != '\\'
}
