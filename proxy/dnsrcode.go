package proxy

import "strconv"

// A response's rcode is 12 bits when it carries EDNS (RFC 6891 §6.1.3):
// the header's 4, and 8 more in its OPT record's TTL field. Read from the
// header alone, a BADVERS answer (16: header 0, OPT 1), which any EDNS
// server gives a query of EDNS version 1, was recorded NOERROR, and a
// BADCOOKIE one (23) as rcode 7, YXDOMAIN's number.

// dnsTypeOPT is the OPT pseudo-record's type.
const dnsTypeOPT = 41

// dnsAnswerRCode is the rcode of a DNS response b (at least a header):
// the header's 4 bits, joined, when the message has an OPT record in its
// additional section, by that record's 8 upper bits. Only a message with
// additional records is walked; the walk skips each question and record
// by its lengths, following no compression pointer, so it reads each byte
// at most once and cannot loop; a message cut short or malformed before
// its OPT record is given the header's rcode. The first OPT record counts
// (a message with more is malformed, RFC 6891 §6.1.1), whatever its owner
// name, as Go's resolver takes it (net's extractExtendedRCode, and
// destcheck's parse after it); miekg/dns's IsEdns0 scans from the end and
// takes the last.
func dnsAnswerRCode(b []byte) uint16 {
	hdr := uint16(b[3] & 0x0f)
	count := func(i int) int { return int(b[i])<<8 | int(b[i+1]) }
	ar := count(10)
	if ar == 0 {
		return hdr
	}
	off := dnsHeaderLen
	for range count(4) { // questions: a name, a type and a class
		if off = skipDNSName(b, off); off < 0 || off+4 > len(b) {
			return hdr
		}
		off += 4
	}
	for range count(6) + count(8) { // answers and authorities
		if off = skipDNSRecord(b, off); off < 0 {
			return hdr
		}
	}
	for range ar {
		name := skipDNSName(b, off)
		if name < 0 || name+10 > len(b) {
			return hdr
		}
		if typ := int(b[name])<<8 | int(b[name+1]); typ == dnsTypeOPT {
			// Type, class (the UDP payload size), then the TTL's first
			// byte: the extended rcode.
			return uint16(b[name+4])<<4 | hdr
		}
		if off = skipDNSRecord(b, off); off < 0 {
			return hdr
		}
	}
	return hdr
}

// skipDNSName returns the offset just past the name at off in b, or -1 if
// it does not end within b. A compression pointer ends a name: it is not
// followed.
func skipDNSName(b []byte, off int) int {
	for off < len(b) {
		c := int(b[off])
		switch {
		case c == 0:
			return off + 1
		case c&0xc0 == 0xc0:
			if off+2 > len(b) {
				return -1
			}
			return off + 2
		case c&0xc0 != 0: // 0x40, 0x80: obsolete label types
			return -1
		}
		off += 1 + c
	}
	return -1
}

// skipDNSRecord returns the offset just past the resource record at off in
// b (a name, type, class, TTL, and data of the length given), or -1 if it
// does not end within b.
func skipDNSRecord(b []byte, off int) int {
	off = skipDNSName(b, off)
	if off < 0 || off+10 > len(b) {
		return -1
	}
	off += 10 + (int(b[off+8])<<8 | int(b[off+9]))
	if off > len(b) {
		return -1
	}
	return off
}

var dnsRCodes = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"}

// dnsExtRCodes names the extended rcodes an OPT record gives a response
// (16 is BADSIG in a TSIG record, which is not read).
var dnsExtRCodes = map[uint16]string{16: "BADVERS", 23: "BADCOOKIE"}

func dnsRCodeName(r uint16) string {
	if int(r) < len(dnsRCodes) {
		return dnsRCodes[r]
	}
	if s, ok := dnsExtRCodes[r]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(int(r))
}
