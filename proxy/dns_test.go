package proxy

import (
	"testing"
)

// query builds a DNS query for name and type t.
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

func TestParseDNS(t *testing.T) {
	q := dnsQuery(0xbeef, "www.gwlbproxy.test", 28)
	m, err := parseDNS(q)
	if err != nil || m.ID != 0xbeef || m.Response || m.Name != "www.gwlbproxy.test" || dnsTypeName(m.Type) != "AAAA" {
		t.Fatalf("query: %+v %v", m, err)
	}
	resp := append([]byte{}, q...)
	resp[2], resp[3] = 0x81, 0x83 // response, NXDOMAIN
	m, err = parseDNS(resp)
	if err != nil || !m.Response || dnsRCodeName(m.RCode) != "NXDOMAIN" {
		t.Fatalf("response: %+v %v", m, err)
	}
	for name, b := range map[string][]byte{
		"short":          q[:11],
		"no question":    append(append([]byte{}, q[:4]...), make([]byte, 8)...),
		"pointer":        append(append([]byte{}, q[:12]...), 0xc0, 0x0c, 0, 1, 0, 1),
		"label past end": append(append([]byte{}, q[:12]...), 40, 'a'),
		"no type":        q[:len(q)-3],
	} {
		if _, err := parseDNS(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzParseDNS: no input panics, and an accepted name fits the DNS limit.
func FuzzParseDNS(f *testing.F) {
	f.Add(dnsQuery(1, "example.com", 1))
	f.Add(dnsQuery(2, "", 255))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDNS(b)
		if err == nil && len(m.Name) > maxDNSName {
			t.Fatalf("name of %d bytes accepted", len(m.Name))
		}
	})
}
