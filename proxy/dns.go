package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/monoclock"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// dnsMessage is what an access record needs of a DNS message: its ID, the
// first question, and (for a response) the rcode.
type dnsMessage struct {
	ID       uint16
	Response bool
	RCode    uint8 // the header's 4 bits: an answer's full rcode is dnsAnswerRCode's
	// Wire is the first question's name as it is on the wire, compression
	// pointers followed: each label's length octet and bytes, without the
	// root's zero ("" for the root). At most 254 bytes, it is what a
	// pending query is kept under; its text (Name) is built only for the
	// record, since a label of '.' bytes, each written \046, would take
	// four times the room.
	Wire string
	Type uint16
}

// Name is the first question's name as text, without the trailing dot
// ("." for the root), its label bytes as they came but for two: a '.'
// inside a label is written \046 and a backslash \092, so that the text
// names one name and no other (labels "a.b" and "c" are not "a", "b",
// "c").
func (m *dnsMessage) Name() string { return wireNameText(m.Wire) }

var errNotDNS = errors.New("not a DNS message")

// maxDNSName bounds a name the way RFC 1035 does: 255 octets on the wire,
// length octets and the root's zero included, so at most 253 bytes of
// labels and dots in the dotted form.
const maxDNSName = 255

// maxDNSPointers bounds the compression pointers one name may follow, so
// that a pointer loop ends. It is far above what a server needs in a
// question (unbound follows none there; one that follows pointers only
// backwards, to a "prior occurrence" as RFC 1035 has it, finds at most six
// in the 12 header bytes before it) and still a walk of a few hundred
// steps. dnsmessage's bound was ten.
const maxDNSPointers = 255

// dnsHeaderLen is the fixed DNS header: ID, flags and four counts.
const dnsHeaderLen = 12

// parseDNS reads the header and first question of a DNS message, and
// nothing after them: it is called for every datagram of a DNS flow, so
// other questions, the class, and the sections after the question (cut
// short or not) are left to the server, as are the opcode and flags. A
// message too short for its header, with no question, or whose first
// question cannot be read is errNotDNS.
//
// The name is read here rather than by dnsmessage, which refuses a label
// with a '.' byte in it: label bytes are binary to a resolver, which
// resolves and forwards such a name, so a tunnel could put its data in one
// and go unrecorded. Any byte a label can hold is taken; the name is
// bounded at 255 octets on the wire and maxDNSPointers compression
// pointers, which may point anywhere in the message, as a server may let
// them.
func parseDNS(b []byte) (dnsMessage, error) {
	var wire [maxDNSName]byte
	m, n, err := parseDNSInto(b, &wire)
	if err != nil {
		return m, err
	}
	m.Wire = string(wire[:n])
	return m, nil
}

// parseDNSInto is parseDNS without the allocation: the name's wire form is
// left in wire[:n], and m.Wire empty.
func parseDNSInto(b []byte, wire *[maxDNSName]byte) (m dnsMessage, n int, err error) {
	if len(b) < dnsHeaderLen || b[4] == 0 && b[5] == 0 { // QDCOUNT 0
		return m, 0, errNotDNS
	}
	m.ID = uint16(b[0])<<8 | uint16(b[1])
	m.Response = b[2]&0x80 != 0
	m.RCode = b[3] & 0x0f
	n, off, err := readQName(b, dnsHeaderLen, wire)
	if err != nil || off+4 > len(b) { // the question's type and class
		return dnsMessage{}, 0, errNotDNS
	}
	m.Type = uint16(b[off])<<8 | uint16(b[off+1])
	return m, n, nil
}

// readQName reads the name at off in msg into wire, following compression
// pointers, in the form dnsMessage.Wire documents, and returns its length
// and the offset just past it in msg.
func readQName(msg []byte, off int, wire *[maxDNSName]byte) (n, next int, err error) {
	ptrs := 0
	next = -1
	for {
		if off >= len(msg) {
			return 0, 0, errNotDNS
		}
		c := int(msg[off])
		if c == 0 {
			if next < 0 {
				next = off + 1
			}
			return n, next, nil
		}
		switch c & 0xc0 {
		case 0x00: // a label of c bytes
			end := off + 1 + c
			if end > len(msg) || n+1+c+1 > maxDNSName { // +1: the root's zero
				return 0, 0, errNotDNS
			}
			n += copy(wire[n:], msg[off:end])
			off = end
		case 0xc0: // a pointer
			if off+1 >= len(msg) {
				return 0, 0, errNotDNS
			}
			if next < 0 {
				next = off + 2
			}
			if ptrs++; ptrs > maxDNSPointers {
				return 0, 0, errNotDNS
			}
			off = (c&0x3f)<<8 | int(msg[off+1])
		default: // 0x40 and 0x80: extended label types, obsolete (RFC 6891)
			return 0, 0, errNotDNS
		}
	}
}

// wireNameText writes a name in dnsMessage.Wire's form as dnsMessage.Name
// documents.
func wireNameText(wire string) string {
	if wire == "" {
		return "."
	}
	escapes := 0
	for i := 0; i < len(wire); i++ {
		if wire[i] == '.' || wire[i] == '\\' {
			escapes++ // a length octet may count too: the Grow is a bound
		}
	}
	// Each label's length octet becomes a dot, the first one none; each
	// escaped byte takes three more.
	var s strings.Builder
	s.Grow(len(wire) - 1 + 3*escapes)
	for i := 0; i < len(wire); {
		l := int(wire[i])
		if i > 0 {
			s.WriteByte('.')
		}
		for _, x := range []byte(wire[i+1 : i+1+l]) {
			switch x {
			case '.':
				s.WriteString(`\046`)
			case '\\':
				s.WriteString(`\092`)
			default:
				s.WriteByte(x)
			}
		}
		i += 1 + l
	}
	return s.String()
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

// isDNSPort reports whether UDP traffic to port is read as DNS.
func (p *Proxy) isDNSPort(port uint16) bool { return slices.Contains(p.cfg.DNSPorts, port) }

// dnsLinger is how long a DNS flow stays open once every query it carried
// has its answer: long enough for a late duplicate answer, or the next
// query of a client that asks in turn on one socket (A, then AAAA), and far
// shorter than the idle timeout, which would hold the flow's host port for
// two minutes after a lookup that took a millisecond.
const dnsLinger = time.Second

// dnsLog turns the DNS traffic of one UDP flow into one record per query:
// name, type, and the answer's rcode, or what ended the flow for queries
// it ended without an answer to (dnsend.go), or untracked for a query it had no room to
// wait for an answer to (recorded as it is relayed). It also says when the flow has nothing left
// to wait for (quiet), so that the flow can end long before its idle
// timeout.
type dnsLog struct {
	p       *Proxy
	base    records.Record // a snapshot: the flow's own record changes as it runs
	mu      sync.Mutex
	pending map[dnsKey]dnsQuestion
	asked   bool     // a query was seen
	opaque  int64    // datagrams from the client that were not DNS queries
	client  shareKey // whose bucket of DNS records the flow's come from
	// unasked counts the server's datagrams that answered no waiting
	// query: not DNS, not a response, or a response to nothing asked. A
	// server's own stream on a DNS port shows by them in the udp record,
	// and they do not put off a lookup's end (lastDNS).
	unasked int64
	// repeats is how many more answers the flow may get without counting
	// them in unasked: one for each copy of an answered query the client
	// sent again, which a server may answer once each, and one for each
	// query relayed untracked, whose answer has nothing to match (keeping
	// what would match it is the memory the bound refused), so that a
	// busy client's ordinary lookups do not read as a server's stream.
	repeats int64
	// lastDNS is when the flow last carried a query or its answer
	// (monoclock): a lookup's end counts from it, the linger once it is
	// quiet, the idle timeout while a query waits.
	lastDNS int64
	// budget is the client's count of pending queries, across its flows
	// (dnspending.go); nil once the flow has closed.
	budget *dnsBudget
	// pol is the policy that allowed the flow (updated when a reload
	// decides it again): its answers are handed to Config.DNSAnswer only
	// while that is the policy in force, so that a flow a reload has not
	// yet re-decided cannot vouch for names under a policy that may deny it.
	pol atomic.Pointer[policy.Policy]
	// dec is the decision of the last reload that decided the flow again
	// (nil: none), for the records of the queries relayed under it.
	dec atomic.Pointer[dnsDecision]
}

// dnsKey is what a response must repeat of its query. Keyed by ID alone, a
// second query with the ID of one still pending took its place, and the
// first one's answer (its name not the second's) went unrecorded: a
// client could hide any query behind an innocent one. The name is the wire
// form (dnsMessage.Wire), at most 254 bytes, with A-Z lowered (dnsfold.go):
// an answer that spells the name in another case finds the query, but is
// its own answer only if it repeats the spelling (dnsQuestion.upper).
type dnsKey struct {
	name string
	id   uint16
	typ  uint16
}

type dnsQuestion struct {
	msg    dnsMessage // its Wire folded, as the key's
	upper  caseBits   // the bytes of msg.Wire the client sent in upper case (in its latest copy)
	size   int
	copies int // copies of it the client sent again before its answer
	start  time.Time
	dec    *dnsDecision // the decision it was relayed under; nil: the flow's first
	early  dnsEarly     // an answer it got that is not its own (dnsearly.go)
}

// dnsDecision is a decision a reload made for a DNS flow, for the records
// of the queries relayed under it: they name the rule and policy that let
// them through, not those that opened the flow.
type dnsDecision struct{ rule, action, policy string }

// redecided records that a reload decided the flow again, by d: the
// queries relayed from now on are recorded under it.
func (d *dnsLog) redecided(dc policy.Decision) {
	d.dec.Store(&dnsDecision{rule: dc.Rule, action: dc.Action.String(), policy: dc.Policy})
}

// maxPendingDNS bounds the queries a flow can leave unanswered in memory.
// A query beyond it is recorded at once, as untracked. A client's flows
// together are bounded too: maxPendingDNSPerClient.
const maxPendingDNS = 1024

func newDNSLog(p *Proxy, base *records.Record, pol *policy.Policy) *dnsLog {
	d := &dnsLog{p: p, base: *base, pending: make(map[dnsKey]dnsQuestion), client: recordShareKey(base)}
	// What the flow's record says of the flow (a first datagram that read
	// as a QUIC Initial and was relayed as udp, a destination check) is
	// the flow's: on each query's record it would read as that query's,
	// an answered lookup seeming to have failed.
	d.base.Error, d.base.DestCheck = "", ""
	d.budget = p.udp.dnsPending.acquire(d.client)
	d.pol.Store(pol)
	return d
}

// recordShareKey is the client of a flow's record as clientShareKey counts
// it: records.SourceOf applies the same rule to the record's endpoint and
// client address.
func recordShareKey(r *records.Record) shareKey {
	src := records.SourceOf(r)
	return shareKey{endpoint: src.Endpoint, client: src.Client}
}

// query looks at a datagram from the client.
func (d *dnsLog) query(b []byte) {
	m, err := parseDNS(b)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil || m.Response {
		d.opaque++
		return
	}
	d.asked = true
	d.lastDNS = monoclock.Now()
	// The record's name is lowered anyway (presentName); the spelling is
	// kept for the answer's (dnsfold.go).
	var upper caseBits
	m.Wire, upper = foldWire(m.Wire)
	k := dnsKey{name: m.Wire, id: m.ID, typ: m.Type}
	switch q, ok := d.pending[k]; {
	case ok:
		// The same question again: a retransmission, which one record
		// names as well as two would. Sent in another case, its own
		// answer is the one that repeats the latest spelling, the one a
		// client that randomises case waits for.
		q.size += len(b)
		q.copies++
		q.upper = upper
		d.pending[k] = q
	case len(d.pending) < maxPendingDNS && d.budget.take():
		d.pending[k] = dnsQuestion{msg: m, upper: upper, size: len(b), start: time.Now(), dec: d.dec.Load()}
	default:
		// No room to wait for its answer, in the flow or in the client's
		// budget: the query is relayed all the same (the client's
		// resolver is its own business), so it is recorded now, or it
		// would never be.
		d.repeats++ // its answer is excused, unmatched
		d.write(dnsQuestion{msg: m, size: len(b), start: time.Now(), dec: d.dec.Load()}, "", 0, "untracked", "")
	}
}

// answer looks at a datagram from the server, before it is relayed to the
// client: a pending query's own answer, one that repeats its ID, type and
// name byte for byte, is recorded and, if its whole rcode (dnsAnswerRCode)
// is NOERROR, handed to Config.DNSAnswer, which thus knows an address
// before the client can act on it, if the policy that allowed the flow is
// still in force. An answer that spells the name in another case, or has
// no question (dnsbare.go) and is the answer of the one query waiting
// under its ID, is noted on the query, which waits on for its own
// (dnsearly.go), and handed to no one. Responses to nothing the client
// asked are not handed on: the client drops them too. Datagrams that
// answer no waiting query are counted (unasked). It reports whether the
// flow is now quiet.
func (d *dnsLog) answer(b []byte) (quiet bool) {
	var wire [maxDNSName]byte
	m, n, err := parseDNSInto(b, &wire)
	bare := err != nil && bareResponse(b) // matched by its ID alone (dnsbare.go)
	if !bare && (err != nil || !m.Response) {
		d.mu.Lock()
		d.unasked++
		d.mu.Unlock()
		return false
	}
	spelled := foldWireBytes(wire[:n]) // as the query is kept (dnsfold.go)
	rcode := dnsAnswerRCode(b)
	d.mu.Lock()
	var k dnsKey
	var q dnsQuestion
	var found, ambiguous bool
	if bare {
		k, q, found, ambiguous = d.findByIDLocked(uint16(b[0])<<8 | uint16(b[1]))
	} else if q, found = d.pending[dnsKey{name: string(wire[:n]), id: m.ID, typ: m.Type}]; found {
		// The lookup converts the name without allocating; the key kept
		// uses the name the query is kept under.
		k = dnsKey{name: q.msg.Wire, id: m.ID, typ: m.Type}
	}
	own := found && !bare && q.upper == spelled
	switch {
	case own:
		delete(d.pending, k)
		d.budget.give(1)
		d.lastDNS = monoclock.Now()
		// Of the copies+1 answers the server may send, this one and the
		// early ones have come.
		d.repeats += int64(max(0, q.copies-q.early.n))
	case found && d.noteEarlyLocked(k, q, b, rcode, bare):
	case d.repeats > 0 && !ambiguous:
		d.repeats-- // a server answering each copy of a query sent again, or an untracked query
	default:
		d.unasked++
	}
	quiet = d.quietLocked()
	d.mu.Unlock()
	if !own {
		return quiet
	}
	if fn := d.p.cfg.DNSAnswer; fn != nil && rcode == 0 {
		// Only a success, by the rcode the record says: a header's
		// NOERROR with an OPT's BADVERS, recorded as the failure it is,
		// vouched for its addresses (glibc's stub, which reads the header
		// alone, uses them; the appliance's record and its own check must
		// not disagree on whether the lookup failed).
		//
		// The generation first: a reload advances it, stores its policy
		// and advances it again, so one that the compare below misses is
		// seen by DNSAnswer (ObserveAt).
		var gen uint64
		if g := d.p.cfg.DNSGeneration; g != nil {
			gen = g()
		}
		if d.pol.Load() == d.p.cfg.Policy.Load() {
			fn(gen, d.base.Endpoint, d.client.client, b)
		}
	}
	note := ""
	if q.early.n > 0 {
		note = q.early.cameFirst() // a forgery shows so (dnsearly.go)
	}
	if b[2]&0x02 != 0 {
		note = joinNotes(note, truncatedNote)
	}
	d.write(q, dnsRCodeName(rcode), int64(len(b)), "ok", note)
	return quiet
}

// quiet reports whether the flow carried DNS queries and nothing else, and
// every query has its answer.
func (d *dnsLog) quiet() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.quietLocked()
}

func (d *dnsLog) quietLocked() bool { return d.asked && d.opaque == 0 && len(d.pending) == 0 }

// lookupSince reports whether the flow is a lookup, its client having sent
// DNS queries and nothing else, and if so when it last carried a query or
// an answer (monoclock) and whether every query has its answer (quiet).
// What the server sends that answers nothing does not move since, or a
// server could keep a lookup's flow, and its host port, as long as it
// liked: after the linger while the flow is quiet, and, by leaving one
// query unanswered, after the idle timeout too.
func (d *dnsLog) lookupSince() (since int64, lookup, quiet bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastDNS, d.asked && d.opaque == 0, d.quietLocked()
}

// notQueries is the note the flow's udp record carries when the client sent
// the DNS port datagrams that are not DNS queries (no header, no question
// that can be read, or a response), or the server sent datagrams that
// answered no waiting query: they have no dns record, and the note says
// the port carried something else. Empty when there were none.
func (d *dnsLog) notQueries() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var notes []string
	if d.opaque > 0 {
		notes = append(notes, fmt.Sprintf("datagrams from the client that were not DNS queries: %d", d.opaque))
	}
	if d.unasked > 0 {
		notes = append(notes, fmt.Sprintf("datagrams from the server that answered no waiting query: %d", d.unasked))
	}
	return strings.Join(notes, "; ")
}

// write records a query, from the client's bucket of DNS records
// (denylimit.go): a query is one datagram, and without a bound one client
// could fill the records queue that every client's records go through.
// Beyond the bucket the query is counted, not recorded, and the client's
// next DNS record says how many went before it unrecorded. note, if any,
// is the query's own error, after that count.
func (d *dnsLog) write(q dnsQuestion, rcode string, in int64, result, note string) {
	ok, skipped := d.p.denies.dns.take(d.client, time.Now(), dnsQueryRate)
	if !ok {
		d.p.denies.dnsUnrecorded.Add(1)
		return
	}
	r := d.base
	if q.dec != nil {
		r.Rule, r.Action, r.Policy = q.dec.rule, q.dec.action, q.dec.policy
	}
	r.Kind, r.QueryName, r.QueryType, r.RCode = "dns", presentName(q.msg.Name()), dnsTypeName(q.msg.Type), rcode
	r.BytesOut, r.BytesIn, r.Result = int64(q.size), in, result
	if skipped > 0 {
		r.Error = fmt.Sprintf("%d more DNS queries from this client before this one, not recorded one by one", skipped)
	}
	r.Error = joinNotes(r.Error, note)
	d.p.finish(&r, q.start)
}

// presentName writes a query name, in the form parseDNS gives it, as
// records show it: ASCII letters in lower case, since DNS names are
// case-insensitive and a client that randomises case (DNS 0x20) or wants to
// hide from searches would otherwise spread one name over many spellings
// that an exact-match search misses; and bytes outside printable ASCII as
// \DDD, as dig and zone files do: a tunnel that puts raw bytes in its
// labels is recorded with the bytes it sent, where the record's UTF-8 would
// have made each one a replacement character. A backslash is kept: in
// parseDNS's form it already begins such an escape (of a '.' in a label,
// or of a backslash). Only A-Z are lowered: a raw byte keeps its own value
// in its escape. Names of lower-case printable ASCII, nearly all, are
// returned as they are, without allocating.
func presentName(name string) string {
	i := 0
	for i < len(name) && plainNameByte(name[i]) {
		i++
	}
	if i == len(name) {
		return name
	}
	b := make([]byte, 0, len(name)+16)
	b = append(b, name[:i]...)
	for ; i < len(name); i++ {
		c := name[i]
		switch {
		case plainNameByte(c):
			b = append(b, c)
		case 'A' <= c && c <= 'Z':
			b = append(b, c+('a'-'A'))
		default:
			b = append(b, '\\', '0'+c/100, '0'+c/10%10, '0'+c%10)
		}
	}
	return string(b)
}

// plainNameByte reports whether a name's byte is recorded as it is:
// printable ASCII but upper-case letters.
func plainNameByte(c byte) bool {
	return c > ' ' && c < 0x7f && !('A' <= c && c <= 'Z')
}
