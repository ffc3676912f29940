package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
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

// isDNSPort reports whether UDP traffic to port is read as DNS.
func (p *Proxy) isDNSPort(port uint16) bool { return slices.Contains(p.cfg.DNSPorts, port) }

// dnsLinger is how long a DNS flow stays open once every query it carried
// has its answer: long enough for a late duplicate answer, or the next
// query of a client that asks in turn on one socket (A, then AAAA), and far
// shorter than the idle timeout, which would hold the flow's host port for
// two minutes after a lookup that took a millisecond.
const dnsLinger = time.Second

// dnsLog turns the DNS traffic of one UDP flow into one record per query:
// name, type, and the answer's rcode, or a timeout for queries the flow
// ended without an answer to, or untracked for a query it had no room to
// wait for an answer to (recorded as it is relayed). It also says when the flow has nothing left
// to wait for (quiet), so that the flow can end long before its idle
// timeout.
type dnsLog struct {
	p       *Proxy
	base    records.Record // a snapshot: the flow's own record changes as it runs
	mu      sync.Mutex
	pending map[dnsKey]dnsQuestion
	asked   bool     // a query was seen
	opaque  bool     // something other than a query came from the client: not plain DNS
	client  shareKey // whose bucket of DNS records the flow's come from
}

// dnsKey is what a response must repeat of its query. Keyed by ID alone, a
// second query with the ID of one still pending took its place, and the
// first one's answer (its name not the second's) went unrecorded: a
// client could hide any query behind an innocent one.
type dnsKey struct {
	name string
	id   uint16
	typ  uint16
}

type dnsQuestion struct {
	msg   dnsMessage
	size  int
	start time.Time
}

// maxPendingDNS bounds the queries a flow can leave unanswered in memory.
// A query beyond it is recorded at once, as untracked.
const maxPendingDNS = 1024

func newDNSLog(p *Proxy, base *records.Record) *dnsLog {
	return &dnsLog{p: p, base: *base, pending: make(map[dnsKey]dnsQuestion), client: recordShareKey(base)}
}

// recordShareKey is the client of a flow's record as clientShareKey counts
// it: the record names the endpoint as "vpce-" and its ID in hex, and the
// client's address.
func recordShareKey(r *records.Record) shareKey {
	var k shareKey
	if s, ok := strings.CutPrefix(r.Endpoint, "vpce-"); ok {
		k.endpoint, _ = strconv.ParseUint(s, 16, 64)
	}
	if a, err := netip.ParseAddr(r.ClientIP); err == nil {
		if a = a.Unmap(); a.Is6() {
			a = netip.PrefixFrom(a, 80).Masked().Addr()
		}
		k.client = a
	}
	return k
}

// query looks at a datagram from the client.
func (d *dnsLog) query(b []byte) {
	m, err := parseDNS(b)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil || m.Response {
		d.opaque = true
		return
	}
	d.asked = true
	k := dnsKey{name: m.Name, id: m.ID, typ: m.Type}
	switch q, ok := d.pending[k]; {
	case ok:
		// The same question again: a retransmission, which one record
		// names as well as two would.
		q.size += len(b)
		d.pending[k] = q
	case len(d.pending) < maxPendingDNS:
		d.pending[k] = dnsQuestion{msg: m, size: len(b), start: time.Now()}
	default:
		// No room to wait for its answer: the query is relayed all the
		// same (the client's resolver is its own business), so it is
		// recorded now, or it would never be.
		d.write(dnsQuestion{msg: m, size: len(b), start: time.Now()}, "", 0, "untracked")
	}
}

// answer looks at a datagram from the server, before it is relayed to the
// client: a response to a pending query is recorded and handed to
// Config.DNSAnswer, which thus knows an address before the client can act
// on it. Responses to nothing the client asked are not handed on: the
// client drops them too. It reports whether the flow is now quiet.
func (d *dnsLog) answer(b []byte) (quiet bool) {
	m, err := parseDNS(b)
	if err != nil || !m.Response {
		return false
	}
	d.mu.Lock()
	k := dnsKey{name: m.Name, id: m.ID, typ: m.Type}
	q, ok := d.pending[k]
	if ok {
		delete(d.pending, k)
	}
	quiet = d.quietLocked()
	d.mu.Unlock()
	if ok {
		if d.p.cfg.DNSAnswer != nil {
			d.p.cfg.DNSAnswer(d.base.Endpoint, b)
		}
		d.write(q, dnsRCodeName(m.RCode), int64(len(b)), "ok")
	}
	return quiet
}

// quiet reports whether the flow carried DNS queries and nothing else, and
// every query has its answer.
func (d *dnsLog) quiet() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.quietLocked()
}

func (d *dnsLog) quietLocked() bool { return d.asked && !d.opaque && len(d.pending) == 0 }

// write records a query, from the client's bucket of DNS records
// (denylimit.go): a query is one datagram, and without a bound one client
// could fill the records queue that every client's records go through.
// Beyond the bucket the query is counted, not recorded, and the client's
// next DNS record says how many went before it unrecorded.
func (d *dnsLog) write(q dnsQuestion, rcode string, in int64, result string) {
	ok, skipped := d.p.denies.dns.take(d.client, time.Now(), dnsQueryRate)
	if !ok {
		d.p.denies.dnsUnrecorded.Add(1)
		return
	}
	r := d.base
	r.Kind, r.QueryName, r.QueryType, r.RCode = "dns", presentName(q.msg.Name), dnsTypeName(q.msg.Type), rcode
	r.BytesOut, r.BytesIn, r.Result = int64(q.size), in, result
	if skipped > 0 {
		r.Error = fmt.Sprintf("%d more DNS queries from this client before this one, not recorded one by one", skipped)
	}
	d.p.finish(&r, q.start)
}

// close records the queries left without an answer as timeouts.
func (d *dnsLog) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, q := range d.pending {
		d.write(q, "", 0, "timeout")
		delete(d.pending, k)
	}
}

// presentName writes a query name as records show it: ASCII letters in
// lower case, since DNS names are case-insensitive and a client that
// randomises case (DNS 0x20) or wants to hide from searches
// would otherwise spread one name over many spellings that an exact-match
// search misses; and bytes outside printable ASCII, and the backslash, as
// \DDD, as dig and zone files do: a tunnel that puts raw bytes in its
// labels is recorded with the bytes it sent, where the record's UTF-8 would
// have made each one a replacement character. Only A-Z are lowered: a raw
// byte keeps its own value in its escape. Names of lower-case printable
// ASCII, nearly all, are returned as they are, without allocating.
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
// printable ASCII but upper-case letters and the backslash.
func plainNameByte(c byte) bool {
	return c > ' ' && c < 0x7f && c != '\\' && !('A' <= c && c <= 'Z')
}
