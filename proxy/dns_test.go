package proxy

import (
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsQuery builds a DNS query for name and type t by hand, so that the
// tests do not depend on the parser under test to write their input.
func dnsQuery(id uint16, name string, t uint16) []byte {
	b := []byte{byte(id >> 8), byte(id), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range splitLabels(name) {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0, byte(t>>8), byte(t), 0, 1)
}

func splitLabels(name string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			if i > start {
				out = append(out, name[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// longName is a name of n octets in dotted form (no trailing dot), in labels
// of at most 63 octets.
func longName(n int) string {
	var s strings.Builder
	for s.Len() < n {
		if s.Len() > 0 {
			s.WriteByte('.')
		}
		l := min(63, n-s.Len())
		s.WriteString(strings.Repeat("a", l))
	}
	return s.String()
}

func TestParseDNS(t *testing.T) {
	q := dnsQuery(0xbeef, "www.gwlbproxy.test", 28)
	m, err := parseDNS(q)
	if err != nil || m.ID != 0xbeef || m.Response || m.RCode != 0 || m.Name != "www.gwlbproxy.test" || dnsTypeName(m.Type) != "AAAA" {
		t.Fatalf("query: %+v %v", m, err)
	}
	resp := append([]byte{}, q...)
	resp[2], resp[3] = 0x81, 0x83 // response, NXDOMAIN
	m, err = parseDNS(resp)
	if err != nil || !m.Response || dnsRCodeName(m.RCode) != "NXDOMAIN" || m.Name != "www.gwlbproxy.test" {
		t.Fatalf("response: %+v %v", m, err)
	}
	for name, b := range map[string][]byte{
		"empty":            nil,
		"short":            q[:11],
		"header only":      q[:12],
		"no question":      append(append([]byte{}, q[:4]...), make([]byte, 8)...),
		"pointer loop":     append(append([]byte{}, q[:12]...), 0xc0, 0x0c, 0, 1, 0, 1),
		"pointer past end": append(append([]byte{}, q[:12]...), 0xc0, 0xff, 0, 1, 0, 1),
		"pointer cut":      append(append([]byte{}, q[:12]...), 0xc0),
		"reserved 0x40":    append(append([]byte{}, q[:12]...), 0x40, 'a', 0, 0, 1, 0, 1),
		"reserved 0x80":    append(append([]byte{}, q[:12]...), 0x80, 'a', 0, 0, 1, 0, 1),
		"label past end":   append(append([]byte{}, q[:12]...), 40, 'a'),
		"no terminator":    append(append([]byte{}, q[:12]...), 1, 'a'),
		"dot in label":     append(append([]byte{}, q[:12]...), 3, 'a', '.', 'b', 0, 0, 1, 0, 1),
		"no type":          q[:len(q)-5],
		"no class":         q[:len(q)-3],
		"name too long":    dnsQuery(1, longName(254), 1),
	} {
		if m, err := parseDNS(b); err != errNotDNS {
			t.Errorf("%s: %+v, %v; want errNotDNS", name, m, err)
		}
	}
}

func TestParseDNSNames(t *testing.T) {
	hdr := []byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, c := range []struct {
		what string
		msg  []byte
		name string
		typ  uint16
	}{
		{"root", dnsQuery(7, "", 2), ".", 2},
		{"one label", dnsQuery(7, "localhost", 1), "localhost", 1},
		{"longest name", dnsQuery(7, longName(253), 1), longName(253), 1},
		{"63-octet label", dnsQuery(7, longName(63)+".test", 16), longName(63) + ".test", 16},
		{"bytes kept as they are", dnsQuery(7, "a b\x00\xff.test", 1), "a b\x00\xff.test", 1},
		{"unknown type", dnsQuery(7, "x.test", 0xfff0), "x.test", 0xfff0},
		{
			// A pointer in the question is followed, as a server would: the
			// name logged is the one the server answers for.
			"pointer",
			append(append(append([]byte{}, hdr...),
				0xc0, 18, 0, 1, 0, 1), // name: pointer to offset 18; type A, class IN
				3, 'p', 't', 'r', 4, 't', 'e', 's', 't', 0),
			"ptr.test", 1,
		},
		{
			"two questions: the first is read",
			append(append(append([]byte{}, hdr[:5]...), 2, 0, 0, 0, 0, 0, 0),
				1, 'a', 0, 0, 1, 0, 1, 1, 'b', 0, 0, 28, 0, 1),
			"a", 1,
		},
		{"trailing bytes", append(dnsQuery(7, "x.test", 1), 1, 2, 3), "x.test", 1},
	} {
		m, err := parseDNS(c.msg)
		if err != nil || m.ID != 7 || m.Name != c.name || m.Type != c.typ {
			t.Errorf("%s: %+v, %v; want %q type %d", c.what, m, err, c.name, c.typ)
		}
	}
}

// TestParseDNSAllocs: the per-datagram parse allocates only the name.
func TestParseDNSAllocs(t *testing.T) {
	q := dnsQuery(1, "www.gwlbproxy.test", 1)
	if n := testing.AllocsPerRun(100, func() { parseDNS(q) }); n > 1 {
		t.Errorf("parseDNS of a query: %v allocations, want at most 1", n)
	}
	notDNS := []byte("GET / HTTP")
	if n := testing.AllocsPerRun(100, func() { parseDNS(notDNS) }); n != 0 {
		t.Errorf("parseDNS of a short datagram: %v allocations, want 0", n)
	}
}

func BenchmarkParseDNS(b *testing.B) {
	q := dnsQuery(1, "www.gwlbproxy.test", 1)
	b.ReportAllocs()
	for b.Loop() {
		parseDNS(q)
	}
}

// FuzzParseDNS: no input panics; an accepted message has a name within the
// DNS limit, in the form parseDNS documents, which dnsmessage writes back
// into a message that parses to the same question.
func FuzzParseDNS(f *testing.F) {
	f.Add(dnsQuery(1, "example.com", 1))
	f.Add(dnsQuery(2, "", 255))
	f.Add(dnsQuery(3, longName(253), 28))
	f.Add([]byte{0, 4, 0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 18, 0, 1, 0, 1, 1, 'a', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDNS(b)
		if err != nil {
			if err != errNotDNS {
				t.Fatalf("error %v, want errNotDNS", err)
			}
			return
		}
		if len(m.Name) > maxDNSName-2 {
			t.Fatalf("name of %d bytes accepted", len(m.Name))
		}
		if m.Name == "" || (m.Name != "." && strings.HasSuffix(m.Name, ".")) {
			t.Fatalf("name %q: want \".\" or no trailing dot", m.Name)
		}
		fqdn := m.Name
		if fqdn != "." {
			fqdn += "."
		}
		n, err := dnsmessage.NewName(fqdn)
		if err != nil {
			t.Fatalf("name %q: %v", m.Name, err)
		}
		bl := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: m.ID, Response: m.Response, RCode: dnsmessage.RCode(m.RCode)})
		if err := bl.StartQuestions(); err != nil {
			t.Fatal(err)
		}
		if err := bl.Question(dnsmessage.Question{Name: n, Type: dnsmessage.Type(m.Type), Class: dnsmessage.ClassINET}); err != nil {
			t.Fatalf("name %q: %v", m.Name, err)
		}
		again, err := bl.Finish()
		if err != nil {
			t.Fatal(err)
		}
		if m2, err := parseDNS(again); err != nil || m2 != m {
			t.Fatalf("written back: %+v, %v; want %+v", m2, err, m)
		}
	})
}
