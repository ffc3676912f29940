package destcheck

import (
	"net"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// withOPT is msg (packed by dnsmessage, no additional records) with an
// OPT record of extended rcode ext and EDNS version ver appended.
func withOPT(t *testing.T, msg []byte, ext, ver byte) []byte {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(msg); err != nil {
		t.Fatal(err)
	}
	m.Additionals = append(m.Additionals, dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("."), Type: dnsmessage.TypeOPT,
			Class: 1232, TTL: uint32(ext)<<24 | uint32(ver)<<16},
		Body: &dnsmessage.OPTResource{},
	})
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestObserveIgnoresExtendedRCode: a response whose header says NOERROR
// and whose OPT record says BADVERS (extended rcode 1: 16) is a failed
// lookup, as the proxy's dns record of it says; read from the header's 4
// bits alone it vouched for its addresses (review rev30c F1: a hostile
// resolver's answer for bank.example.test, recorded BADVERS, made the
// check vouch for its rogue address). So is one whose OPT is of another
// EDNS version, whose extended rcode the proxy reads too, and one that
// cannot be read as far as its OPT record. An OPT of extended rcode 0 is
// NOERROR.
func TestObserveIgnoresExtendedRCode(t *testing.T) {
	c := newTestChecker(t, Config{}, nil)
	answer := func(name string) []byte {
		return msg(t, name+".", rr{name: name + ".", ttl: 3600, addr: "203.0.113.66"})
	}
	c.Observe(epA, withOPT(t, answer("bank.example.test"), 1, 0))
	c.Observe(epA, withOPT(t, answer("v1.example.test"), 1, 1))
	cut := withOPT(t, answer("cut.example.test"), 0, 0)
	c.Observe(epA, cut[:len(cut)-3])
	c.Observe(epA, withOPT(t, answer("ok.example.test"), 0, 0))
	for _, name := range []string{"bank.example.test", "v1.example.test", "cut.example.test"} {
		wantLookupError(t, check(c, epA, name, "203.0.113.66"), name)
	}
	if err := check(c, epA, "ok.example.test", "203.0.113.66"); err != nil {
		t.Errorf("a NOERROR answer with an OPT of extended rcode 0: %v", err)
	}
	if st := c.Stats(); st.Observed != 1 {
		t.Errorf("%d responses observed, want 1", st.Observed)
	}
}

// TestLookupExtendedRCodeFails: the appliance's own lookup reads the rcode
// as Observe does: a resolver's answer with addresses, a header's NOERROR
// and an OPT's BADVERS, is a failed lookup, not addresses of the name.
func TestLookupExtendedRCodeFails(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go serveQuestions(pc, func(h dnsmessage.Header, q dnsmessage.Question, reply func([]byte)) {
		m := dnsmessage.Message{Header: dnsmessage.Header{ID: h.ID, Response: true}, Questions: []dnsmessage.Question{q}}
		if q.Type == dnsmessage.TypeA {
			m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
				Body: &dnsmessage.AResource{A: [4]byte{203, 0, 113, 66}}}}
		}
		b, err := m.Pack()
		if err != nil {
			return
		}
		reply(withOPT(t, b, 1, 0))
	})
	c := newTestChecker(t, Config{Resolver: pc.LocalAddr().(*net.UDPAddr).AddrPort()}, nil)
	err = check(c, epA, "bank.example.test", "203.0.113.66")
	wantLookupError(t, err, "bank.example.test")
	if err == nil || !strings.Contains(err.Error(), "answered BADVERS") {
		t.Errorf("got %v, want the lookup failed with BADVERS", err)
	}
}
