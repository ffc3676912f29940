package sniff

import (
	"errors"
	"testing"
)

// An SNI host_name holds letters, digits, '-', '_' and '.' only; a
// ClientHello whose name has any other byte is malformed (docs/policy.md:
// an SNI with bytes no DNS name holds is refused as unreadable). The policy
// would deny such a name too, but the record must say why: the hello could
// not be read, not "denied by policy", and no such name may reach the
// trust-host check or the records. Every byte is tried, in the middle of a
// name so that only the byte set decides.
func TestSNIHostNameByteSet(t *testing.T) {
	for c := range 256 {
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
		name := "a" + string([]byte{byte(c)}) + "b.example"
		h, err := ParseClientHello(record(helloBody(sniExt(hostName(name)))))
		switch {
		case ok && (err != nil || h.ServerName != name):
			t.Errorf("byte %#02x: ServerName %q, %v; want %q", c, h.ServerName, err, name)
		case !ok && !errors.Is(err, ErrMalformed):
			t.Errorf("byte %#02x: ServerName %q, %v; want ErrMalformed", c, h.ServerName, err)
		}
	}
}
