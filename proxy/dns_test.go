package proxy

import (
	"strings"
	"testing"
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

// dnsQueryLabels builds a message of one question whose name has the given
// labels, whatever bytes they hold; flags are the header's third and fourth
// bytes (0: a query).
func dnsQueryLabels(id uint16, labels []string, t uint16, flags uint16) []byte {
	b := []byte{byte(id >> 8), byte(id), byte(flags >> 8), byte(flags), 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range labels {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0, byte(t>>8), byte(t), 0, 1)
}

// pointerChain is a query whose name is n compression pointers, each to the
// next, the last to the name "end".
func pointerChain(n int) []byte {
	b := []byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	// The question: a pointer to the chain, then type A, class IN; the
	// chain starts after it.
	chain := len(b) + 6
	b = append(b, 0xc0, byte(chain), 0, 1, 0, 1)
	for i := 1; i < n; i++ {
		next := chain + 2*i
		b = append(b, 0xc0|byte(next>>8), byte(next))
	}
	return append(b, 3, 'e', 'n', 'd', 0)
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
	if err != nil || m.ID != 0xbeef || m.Response || m.RCode != 0 || m.Name() != "www.gwlbproxy.test" || dnsTypeName(m.Type) != "AAAA" {
		t.Fatalf("query: %+v %v", m, err)
	}
	resp := append([]byte{}, q...)
	resp[2], resp[3] = 0x81, 0x83 // response, NXDOMAIN
	m, err = parseDNS(resp)
	if err != nil || !m.Response || dnsRCodeName(uint16(m.RCode)) != "NXDOMAIN" || m.Name() != "www.gwlbproxy.test" {
		t.Fatalf("response: %+v %v", m, err)
	}
	for name, b := range map[string][]byte{
		"empty":                  nil,
		"short":                  q[:11],
		"header only":            q[:12],
		"no question":            append(append([]byte{}, q[:4]...), make([]byte, 8)...),
		"pointer loop":           append(append([]byte{}, q[:12]...), 0xc0, 0x0c, 0, 1, 0, 1),
		"pointer past end":       append(append([]byte{}, q[:12]...), 0xc0, 0xff, 0, 1, 0, 1),
		"pointer cut":            append(append([]byte{}, q[:12]...), 0xc0),
		"reserved 0x40":          append(append([]byte{}, q[:12]...), 0x40, 'a', 0, 0, 1, 0, 1),
		"reserved 0x80":          append(append([]byte{}, q[:12]...), 0x80, 'a', 0, 0, 1, 0, 1),
		"label past end":         append(append([]byte{}, q[:12]...), 40, 'a'),
		"no terminator":          append(append([]byte{}, q[:12]...), 1, 'a'),
		"no type":                q[:len(q)-5],
		"no class":               q[:len(q)-3],
		"name too long":          dnsQuery(1, longName(254), 1),
		"pointer chain too long": pointerChain(maxDNSPointers + 1),
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
		{
			// A resolver takes label bytes as binary and resolves this
			// name; dnsmessage refused it, and the query went unrecorded.
			"dot in a label",
			dnsQueryLabels(7, []string{"c2VjcmV0.ZGF0YQ", "exfil", "test"}, 16, 0),
			`c2VjcmV0\046ZGF0YQ.exfil.test`, 16,
		},
		{"backslash in a label", dnsQueryLabels(7, []string{`a\046`, "test"}, 1, 0), `a\092046.test`, 1},
		{"label of dots", dnsQueryLabels(7, []string{"..", "x"}, 1, 0), `\046\046.x`, 1},
		{"class other than IN", append(dnsQuery(7, "x.test", 1)[:len(dnsQuery(7, "x.test", 1))-2], 0, 3), "x.test", 1},
		{
			// Pointers past dnsmessage's ten are followed: a server may.
			"chain of 20 pointers",
			pointerChain(20),
			"end", 1,
		},
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
		if err != nil || m.ID != 7 || m.Name() != c.name || m.Type != c.typ {
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
// DNS limits, in the form parseDNS documents, which written back as the
// labels it names gives a message that parses to the same question.
func FuzzParseDNS(f *testing.F) {
	f.Add(dnsQuery(1, "example.com", 1))
	f.Add(dnsQuery(2, "", 255))
	f.Add(dnsQuery(3, longName(253), 28))
	f.Add([]byte{0, 4, 0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 18, 0, 1, 0, 1, 1, 'a', 0})
	f.Add(dnsQueryLabels(5, []string{"a.b", `c\d`, "E"}, 16, 0))
	f.Add(pointerChain(30))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDNS(b)
		if err != nil {
			if err != errNotDNS {
				t.Fatalf("error %v, want errNotDNS", err)
			}
			return
		}
		name := m.Name()
		if name == "" || (name != "." && strings.HasSuffix(name, ".")) {
			t.Fatalf("name %q: want \".\" or no trailing dot", name)
		}
		var labels []string
		if name != "." {
			labels = nameLabels(t, name)
		}
		wire := 1
		for _, l := range labels {
			if len(l) == 0 || len(l) > 63 {
				t.Fatalf("name %q: a label of %d bytes", name, len(l))
			}
			wire += 1 + len(l)
		}
		if wire > maxDNSName {
			t.Fatalf("name %q: %d octets on the wire", name, wire)
		}
		flags := uint16(m.RCode)
		if m.Response {
			flags |= 0x8000
		}
		again := dnsQueryLabels(m.ID, labels, m.Type, flags)
		if m2, err := parseDNS(again); err != nil || m2 != m {
			t.Fatalf("written back: %+v, %v; want %+v", m2, err, m)
		}
	})
}

// nameLabels splits a name in parseDNS's form into its labels' bytes: at
// the dots, with \046 and \092 (the only escapes parseDNS writes) undone.
func nameLabels(t *testing.T, name string) []string {
	var labels []string
	var l []byte
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case '.':
			labels = append(labels, string(l))
			l = l[:0]
		case '\\':
			switch e := name[i+1 : min(i+4, len(name))]; e {
			case "046":
				l = append(l, '.')
			case "092":
				l = append(l, '\\')
			default:
				t.Fatalf("name %q: escape \\%s", name, e)
			}
			i += 3
		default:
			l = append(l, c)
		}
	}
	return append(labels, string(l))
}

// TestParseDNSRefusesWhatNoServerReads: what a server would not read as a
// query is not recorded as one (records.md: "a header, a question count
// that is not zero, then the name ... and its type"): a question count of
// 0, a question cut short in its class, and labels of the obsolete
// extended types are refused. Otherwise a client could have any name of
// its choosing recorded as a dns query it never made.
func TestParseDNSRefusesWhatNoServerReads(t *testing.T) {
	q := dnsQuery(7, "hidden.exfil.test", 1)
	noQD := append([]byte{}, q...)
	noQD[4], noQD[5] = 0, 0 // QDCOUNT 0, a question's bytes after the header
	// A label of type 0x40 whose low six bits make a short label that
	// fits: a server refuses it.
	ext := append(append([]byte{}, q[:12]...), 0x41, 'a', 0, 0, 1, 0, 1)
	ext80 := append(append([]byte{}, q[:12]...), 0x81, 'a', 0, 0, 1, 0, 1)
	for name, b := range map[string][]byte{
		"question count 0 with a question after it": noQD,
		"type, half a class":                        q[:len(q)-1],
		"type, no class":                            q[:len(q)-2],
		"extended label 0x41":                       ext,
		"extended label 0x81":                       ext80,
	} {
		if m, err := parseDNS(b); err != errNotDNS {
			t.Errorf("%s: parsed as %+v (%q), %v; want errNotDNS", name, m, m.Name(), err)
		}
	}
}

// TestDNSRCodeNames: every rcode the records name (records.md: NOERROR,
// NXDOMAIN, SERVFAIL, ...) is written by its name, the last one, REFUSED,
// included, the extended BADVERS and BADCOOKIE too, and others by number.
func TestDNSRCodeNames(t *testing.T) {
	for r, want := range []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"} {
		if got := dnsRCodeName(uint16(r)); got != want {
			t.Errorf("rcode %d: %q, want %q", r, got, want)
		}
	}
	for r, want := range map[uint16]string{6: "RCODE6", 16: "BADVERS", 17: "RCODE17", 23: "BADCOOKIE", 4095: "RCODE4095"} {
		if got := dnsRCodeName(r); got != want {
			t.Errorf("rcode %d: %q, want %q", r, got, want)
		}
	}
}
