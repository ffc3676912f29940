package proxy

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
)

// dnsMessage is what an access record needs of a DNS message: its ID, the
// first question, and (for a response) the rcode.
type dnsMessage struct {
	ID       uint16
	Response bool
	RCode    uint8
	Name     string // the first question's name, without the trailing dot
	Type     uint16
}

var errNotDNS = errors.New("not a DNS message")

// maxDNSName bounds a name the way RFC 1035 does (255 octets on the wire).
const maxDNSName = 255

// parseDNS reads the header and first question of a DNS message. It never
// follows compression pointers: a question name is written out in full in
// every query and answer, and refusing pointers rules out loops.
func parseDNS(b []byte) (dnsMessage, error) {
	var m dnsMessage
	if len(b) < 12 {
		return m, errNotDNS
	}
	m.ID = binary.BigEndian.Uint16(b[0:2])
	m.Response = b[2]&0x80 != 0
	m.RCode = b[3] & 0x0f
	if binary.BigEndian.Uint16(b[4:6]) == 0 {
		return m, errNotDNS // no question
	}
	var name strings.Builder
	off, wire := 12, 0
	for {
		if off >= len(b) {
			return m, errNotDNS
		}
		l := int(b[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 || off+l > len(b) { // 0xC0 and up: a pointer, or garbage
			return m, errNotDNS
		}
		if wire += l + 1; wire > maxDNSName {
			return m, errNotDNS
		}
		if name.Len() > 0 {
			name.WriteByte('.')
		}
		name.Write(b[off : off+l])
		off += l
	}
	if off+4 > len(b) {
		return m, errNotDNS
	}
	m.Type = binary.BigEndian.Uint16(b[off : off+2])
	m.Name = name.String()
	if m.Name == "" {
		m.Name = "."
	}
	return m, nil
}

var dnsTypes = map[uint16]string{
	1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
	33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY",
}

func dnsTypeName(t uint16) string {
	if s, ok := dnsTypes[t]; ok {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}

var dnsRCodes = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"}

func dnsRCodeName(r uint8) string {
	if int(r) < len(dnsRCodes) {
		return dnsRCodes[r]
	}
	return "RCODE" + strconv.Itoa(int(r))
}
