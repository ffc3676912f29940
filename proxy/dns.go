package proxy

import (
	"errors"
	"strconv"

	"golang.org/x/net/dns/dnsmessage"
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

// maxDNSName bounds a name the way RFC 1035 does (255 octets on the wire,
// so at most 253 in the dotted form parseDNS returns); dnsmessage enforces
// it while it reads the name.
const maxDNSName = 255

// dnsHeaderLen is the fixed DNS header: ID, flags and four counts.
const dnsHeaderLen = 12

// parseDNS reads the header and first question of a DNS message, and
// nothing after them: it is called for every datagram of a DNS flow. Any
// message dnsmessage refuses, or one with no question, is errNotDNS.
// dnsmessage bounds a name at 255 octets on the wire, follows at most ten
// compression pointers (so a pointer loop ends in an error), and refuses a
// label with a '.' in it, which would make the logged name ambiguous.
func parseDNS(b []byte) (dnsMessage, error) {
	var m dnsMessage
	if len(b) < dnsHeaderLen {
		// Checked here too, so that datagrams that are plainly not DNS are
		// refused without dnsmessage allocating an error for them.
		return m, errNotDNS
	}
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil {
		return m, errNotDNS
	}
	m.ID, m.Response, m.RCode = h.ID, h.Response, uint8(h.RCode&0x0f)
	q, err := p.Question() // dnsmessage.ErrSectionDone: no question
	if err != nil {
		return m, errNotDNS
	}
	m.Type = uint16(q.Type)
	// q.Name is a value (a [255]byte array and a length), so the name's
	// string is the one allocation of a parse. Its text ends in a dot, and
	// the root is ".".
	name := q.Name.Data[:q.Name.Length]
	if len(name) <= 1 {
		m.Name = "."
		return m, nil
	}
	m.Name = string(name[:len(name)-1])
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
