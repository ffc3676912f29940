package destcheck

import (
	"errors"
	"net/netip"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// Limits of what one DNS response is read for.
const (
	// maxChain bounds a CNAME chain: the question's name and up to seven
	// aliases. Real chains are two or three links long; a longer one (or a
	// loop) ends there, and what lies beyond is ignored.
	maxChain = 8
	// maxRecords bounds the answer records of one response that are
	// looked at; the rest are ignored.
	maxRecords = 64
)

var errNotResponse = errors.New("not a DNS response")

// cnameRR and addrRR are answer records, as read.
type cnameRR struct {
	owner, target dnsmessage.Name
	ttl           uint32
}

type addrRR struct {
	owner dnsmessage.Name
	addr  netip.Addr
	ttl   uint32
}

// response is what a DNS response says about the addresses of the name it
// was asked for. Its arrays are large (a dnsmessage.Name is 256 bytes), so
// responses are pooled, never allocated per message.
type response struct {
	header dnsmessage.Header
	// rcode is the whole rcode: the header's 4 bits and, when the
	// response carries an OPT record, its 8 extended ones (RFC 6891
	// §6.1.3), as the proxy's dns records read it.
	rcode    uint16
	question dnsmessage.Question
	cnames   [maxRecords]cnameRR
	ncnames  int
	addrs    [maxRecords]addrRR
	naddrs   int

	// The chain, once bind has run: chain[0] is the question's name,
	// chain[i+1] the target of chain[i]'s CNAME, linkTTL[i] that record's
	// TTL.
	chain   [maxChain]dnsmessage.Name
	linkTTL [maxChain]uint32
	nchain  int
	bound   [maxRecords * maxChain]boundAddr
	nbound  int
}

var responsePool = sync.Pool{New: func() any { return new(response) }}

// parse reads msg's header, its first question and the A, AAAA and CNAME
// records of class IN in its answer section (at most maxRecords of them),
// then the rest of the message up to its first OPT record, for the whole
// rcode (r.rcode). Every other record is skipped. A message dnsmessage
// refuses, cut short or malformed before its OPT record (or its end, when
// it has none) too, or one that is not a response with a question, is an
// error: nothing of it counts.
//
// Read from the header's 4 bits alone, a response whose header says
// NOERROR and whose OPT says otherwise (BADVERS: header 0, OPT 1) counted
// as a success: its addresses vouched for its name while the dns record of
// the same answer said the lookup failed. A message whose rcode cannot be
// read to its OPT record is no answer to learn from: the proxy's walk may
// have read a failure there.
func (r *response) parse(msg []byte) error {
	r.ncnames, r.naddrs, r.nchain, r.nbound = 0, 0, 0, 0
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return err
	}
	if !h.Response {
		return errNotResponse
	}
	r.header, r.rcode = h, uint16(h.RCode)
	if r.question, err = p.Question(); err != nil {
		return err
	}
	if err := p.SkipAllQuestions(); err != nil {
		return err
	}
	if err := r.parseAnswers(&p); err != nil {
		return err
	}
	return r.parseRCode(&p)
}

// parseAnswers reads the answer section's A, AAAA and CNAME records of
// class IN, the first maxRecords of them; the rest are skipped.
func (r *response) parseAnswers(p *dnsmessage.Parser) error {
	for n := 0; n < maxRecords; n++ {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return nil
		}
		if err != nil {
			return err
		}
		if rh.Class != dnsmessage.ClassINET {
			if err := p.SkipAnswer(); err != nil {
				return err
			}
			continue
		}
		switch rh.Type {
		case dnsmessage.TypeA:
			a, err := p.AResource()
			if err != nil {
				return err
			}
			r.addrs[r.naddrs] = addrRR{owner: rh.Name, addr: netip.AddrFrom4(a.A), ttl: rh.TTL}
			r.naddrs++
		case dnsmessage.TypeAAAA:
			a, err := p.AAAAResource()
			if err != nil {
				return err
			}
			r.addrs[r.naddrs] = addrRR{owner: rh.Name, addr: netip.AddrFrom16(a.AAAA).Unmap(), ttl: rh.TTL}
			r.naddrs++
		case dnsmessage.TypeCNAME:
			c, err := p.CNAMEResource()
			if err != nil {
				return err
			}
			r.cnames[r.ncnames] = cnameRR{owner: rh.Name, target: c.CNAME, ttl: rh.TTL}
			r.ncnames++
		default:
			if err := p.SkipAnswer(); err != nil {
				return err
			}
		}
	}
	return p.SkipAllAnswers()
}

// parseRCode skips the authorities and reads the additional section up to
// its first OPT record, whose TTL's first byte holds the upper 8 bits of
// the rcode. The first OPT counts, as Go's resolver takes it
// (extractExtendedRCode), and whatever its EDNS version: dnsmessage's
// ExtendedRCode reads them only for version 0, and the proxy's records
// (dnsAnswerRCode) for any, so a response of another version whose OPT
// says a failure would have vouched here while recorded as failed there.
func (r *response) parseRCode(p *dnsmessage.Parser) error {
	if err := p.SkipAllAuthorities(); err != nil {
		return err
	}
	for {
		rh, err := p.AdditionalHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return nil
		}
		if err != nil {
			return err
		}
		if rh.Type == dnsmessage.TypeOPT {
			r.rcode |= uint16(rh.TTL>>24) << 4
			return nil
		}
		if err := p.SkipAdditional(); err != nil {
			return err
		}
	}
}

// boundAddr is an address the chain leads to, for one name of the chain.
type boundAddr struct {
	name int // the name's place in the chain: 0 for the question's own
	addr netip.Addr
	ttl  uint32 // the smallest TTL on the way from that name to the address
}

// bind follows the CNAME chain from the question's name through the answer
// records and lists in r.bound every address the chain leads to, once for
// each name of the chain that resolves to it. Records off the chain (an
// answer about some other name) are ignored: a response vouches only for
// what it was asked.
func (r *response) bind() {
	r.chain[0], r.nchain, r.nbound = r.question.Name, 1, 0
chain:
	for r.nchain < maxChain {
		last := &r.chain[r.nchain-1]
		for j := range r.ncnames {
			c := &r.cnames[j]
			if !nameEqual(&c.owner, last) {
				continue
			}
			for k := range r.nchain {
				if nameEqual(&c.target, &r.chain[k]) {
					break chain // a loop
				}
			}
			r.linkTTL[r.nchain-1] = c.ttl
			r.chain[r.nchain] = c.target
			r.nchain++
			continue chain
		}
		break
	}
	for j := range r.naddrs {
		a := &r.addrs[j]
		owner := -1
		for k := range r.nchain {
			if nameEqual(&a.owner, &r.chain[k]) {
				owner = k
				break
			}
		}
		if owner < 0 {
			continue
		}
		// Walk back from the owner to the question: each name before it
		// reaches the address through one more link.
		ttl := a.ttl
		for i := owner; i >= 0; i-- {
			if i < owner {
				ttl = min(ttl, r.linkTTL[i])
			}
			r.bound[r.nbound] = boundAddr{name: i, addr: a.addr, ttl: ttl}
			r.nbound++
		}
	}
}

// nameEqual compares two names as DNS does: ASCII letters case-insensitively.
func nameEqual(a, b *dnsmessage.Name) bool {
	if a.Length != b.Length {
		return false
	}
	for i := range int(a.Length) {
		x, y := a.Data[i], b.Data[i]
		if x != y && lower(x) != lower(y) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// canonicalName returns n as the checker keys names: lower case, without
// the trailing dot ("" for the root).
func canonicalName(n *dnsmessage.Name) string {
	l := int(n.Length)
	if l > 0 && n.Data[l-1] == '.' {
		l--
	}
	var buf [255]byte
	for i := range l {
		buf[i] = lower(n.Data[i])
	}
	return string(buf[:l])
}

// canonical returns name lower-cased, without one trailing dot. It does not
// allocate when name is already in that form.
func canonical(name string) string {
	if n := len(name); n > 0 && name[n-1] == '.' {
		name = name[:n-1]
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			b := []byte(name)
			for j := i; j < len(b); j++ {
				b[j] = lower(b[j])
			}
			return string(b)
		}
	}
	return name
}
