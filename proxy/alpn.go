package proxy

import (
	"strconv"
	"strings"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// alpnKeep is how many bytes of JSON a record's alpn keeps whole: a
// browser's offer is 11 ("h2,http/1.1"), the longest real ones (old
// clients listing every draft of h2 and SPDY) under 100.
const alpnKeep = 256

// alpnList writes a client's ALPN offer as a record's alpn: the protocol
// names joined with commas. A name may hold any byte (RFC 7301), so a
// comma, a backslash and any byte outside printable ASCII inside one is
// written \DDD, as query_name writes its bytes: the one-name offer
// "h2,http/1.1" must not read as a browser's two-name offer to anything
// keyed on the field (review r1s28 F3), nor "h2\xff" as "h2\xfe" (both
// were U+FFFD in the JSON: review r5s28 F3).
//
// An offer longer than alpnKeep bytes of JSON is cut, and it reports so
// (the caller marks the record truncated): the offer is the client's
// text, up to what the sniffer reads of a ClientHello, and each byte
// outside printable ASCII costs 5 bytes of JSON, so a denied ClientHello
// of 13.8 KB made a 69 KB record, 4.5 times the bytes sent, outside every
// budget (review rev31c F2). The cut keeps the start and the end, never
// inside a \DDD, with "…" between and the number of names after: " (54
// names)". Neither "…" nor a space ever stands raw in an offer written
// whole.
func alpnList(protos []string) (string, bool) {
	n, plain := 0, true
	for _, p := range protos {
		n += len(p) + 1
		for i := 0; i < len(p) && plain; i++ {
			plain = plainALPNByte(p[i])
		}
	}
	var s string
	if plain {
		s = strings.Join(protos, ",")
	} else {
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
		s = string(b)
	}
	cut, ok := records.CutText(s, alpnKeep)
	if !ok {
		return s, false
	}
	// s is printable ASCII: the mark is the only rune outside it.
	m := strings.Index(cut, records.CutMark)
	head, tail := cut[:m], cut[m+len(records.CutMark):]
	// Every backslash in s starts a \DDD: none is split.
	if j := strings.LastIndexByte(head, '\\'); j >= 0 && j+4 > len(head) {
		head = head[:j]
	}
	if i := len(s) - len(tail); i > 0 {
		if j := strings.LastIndexByte(s[max(0, i-3):i], '\\'); j >= 0 {
			tail = s[max(0, i-3)+j+4:]
		}
	}
	return head + records.CutMark + tail + " (" + strconv.Itoa(len(protos)) + " names)", true
}

// setALPN sets rec's alpn to the client's offer (alpnList), and marks rec
// truncated if the offer was cut.
func setALPN(rec *records.Record, protos []string) {
	alpn, cut := alpnList(protos)
	rec.ALPN = alpn
	if cut {
		rec.Truncated = true
	}
}

// plainALPNByte reports whether a protocol name's byte is recorded as it
// is: printable ASCII but the comma and the backslash.
func plainALPNByte(c byte) bool {
	return '!' <= c && c <= '~' && c != ',' && c != '\\'
}
