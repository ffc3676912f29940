package proxy

import "strings"

// alpnList writes a client's ALPN offer as a record's alpn: the protocol
// names joined with commas. A name may hold any byte (RFC 7301), a comma
// included, so a comma or backslash inside one is written \044 or \092,
// as query_name writes a dot inside a label: the one-name offer
// "h2,http/1.1" must not read as a browser's two-name offer to anything
// keyed on the field.
func alpnList(protos []string) string {
	escape := false
	for _, p := range protos {
		if strings.ContainsAny(p, `,\`) {
			escape = true
			break
		}
	}
	if !escape {
		return strings.Join(protos, ",")
	}
	var b strings.Builder
	for i, p := range protos {
		if i > 0 {
			b.WriteByte(',')
		}
		for j := 0; j < len(p); j++ {
			switch p[j] {
			case ',':
				b.WriteString(`\044`)
			case '\\':
				b.WriteString(`\092`)
			default:
				b.WriteByte(p[j])
			}
		}
	}
	return b.String()
}
