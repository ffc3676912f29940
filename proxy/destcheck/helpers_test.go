package destcheck

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/gwlbproxy/gwlbproxy/proxy/destcheck/destchecktest"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

// newTestChecker returns a checker on clk (nil: the real clock), closed
// when the test ends.
func newTestChecker(t testing.TB, cfg Config, clk *fakeClock) *Checker {
	t.Helper()
	now := time.Now
	if clk != nil {
		now = clk.Now
	}
	c := newChecker(cfg, now)
	t.Cleanup(c.Close)
	return c
}

// startServer starts a test DNS server on loopback, stopped when the test
// ends.
func startServer(t testing.TB) *destchecktest.Server {
	t.Helper()
	s, err := destchecktest.Start(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// rr is a record of a response built by msg.
type rr struct {
	name  string
	ttl   uint32
	addr  string // A or AAAA
	cname string
}

// msg builds a NOERROR response to an A query for qname with answers.
func msg(t testing.TB, qname string, answers ...rr) []byte {
	t.Helper()
	return msgWith(t, dnsmessage.Header{ID: 7, Response: true, RecursionAvailable: true}, qname, answers...)
}

func msgWith(t testing.TB, h dnsmessage.Header, qname string, answers ...rr) []byte {
	t.Helper()
	m := dnsmessage.Message{Header: h, Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(qname), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
	for _, a := range answers {
		hdr := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(a.name), Class: dnsmessage.ClassINET, TTL: a.ttl}
		switch {
		case a.cname != "":
			hdr.Type = dnsmessage.TypeCNAME
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(a.cname)}})
		case netip.MustParseAddr(a.addr).Is4():
			hdr.Type = dnsmessage.TypeA
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AResource{A: netip.MustParseAddr(a.addr).As4()}})
		default:
			hdr.Type = dnsmessage.TypeAAAA
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(a.addr).As16()}})
		}
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
