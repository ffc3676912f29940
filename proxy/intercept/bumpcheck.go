package intercept

import (
	"context"
	"net/netip"
	"strings"
)

// The destination check of a bump.
//
// A bump decided on the SNI (a rule with domains) sends that name to the
// destination in the appliance's own ClientHello, before any certificate
// is seen: a client that chose both the name (any label under an allowed
// domain) and the address (one it controls) would otherwise get bytes of
// its choosing to an address nothing checked, on every connection, even
// though the verification that follows fails. So, with
// destination_check: dns, the destination is checked before the upstream
// handshake, as a spliced connection's is before its first byte.
//
// A destination that verified a certificate for the name a short while ago
// holds a key for it, which proves more than DNS could: it is not checked
// again (provenOrigin), so a busy origin costs no lookup per connection.

// provenOriginsSize bounds the (destination, name) pairs remembered.
const provenOriginsSize = 4096

// provenOrigin is a destination and a name it verified a certificate for.
type provenOrigin struct {
	dest netip.AddrPort
	name string // lower case
}

func newProvenOrigin(dest netip.AddrPort, name string) provenOrigin {
	return provenOrigin{dest: dest, name: strings.ToLower(name)}
}

// checkBumpDestination runs the destination check a bump decided on the
// SNI needs, before the upstream handshake. It returns false when the
// connection was refused: a mismatch, or a check that failed; the record
// then says why, as a spliced connection's does. (Audit mode, where a
// mismatch would only be recorded, never bumps: its bumps are splices.)
func (s *session) checkBumpDestination() bool {
	sni := s.Hello.ServerName
	if !s.needsDestinationCheck(s.Decision, sni) || s.ic.proven.has(newProvenOrigin(s.Subject.Dest, sni)) {
		return true
	}
	if err := s.checkDestination(context.Background(), sni); err != nil {
		s.Record.DestCheck = "mismatch"
		s.Upstream.Close() // not a byte sent
		WriteAlert(s.client, AlertAccessDenied)
		s.refuse(err.Error())
		return false
	}
	s.Record.DestCheck = "ok"
	return true
}
