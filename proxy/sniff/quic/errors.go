package quic

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by Assembler.Add matches exactly one
// of them under errors.Is (an unreadable ClientHello additionally matches the
// sniff package's error that explains it).
var (
	// ErrNotQUIC means the datagram does not start with a long-header
	// packet of a supported QUIC version that a client would send: a short
	// header, an unknown version, a Version Negotiation or Retry packet, or
	// too few bytes to tell.
	ErrNotQUIC = errors.New("quic: not a QUIC v1/v2 client packet")
	// ErrMalformed means the datagram is QUIC v1 or v2 but its Initial
	// packets cannot be read: bad header fields, failed decryption, frames
	// not allowed in an Initial, CRYPTO data that contradicts earlier data,
	// or a handshake that is not a well-formed ClientHello.
	ErrMalformed = errors.New("quic: malformed Initial")
	// ErrTooLarge means the client went past the Assembler's bounds: too
	// many datagrams without a complete ClientHello, CRYPTO data beyond
	// MaxCryptoLen, or too fragmented to keep.
	ErrTooLarge = errors.New("quic: Initial handshake exceeds limits")
)

// Preallocated errors of the packet-reading path. Every packet of a
// decided flow's Initial is opened under several keys, all but one of which
// fail by design, and Belongs runs on the packet path: building an error
// with fmt for each failed trial was most of its cost. They wrap
// ErrMalformed; Add adds the datagram and the packet's position.
var (
	errNoSample      = fmt.Errorf("%w: packet too short for a header protection sample", ErrMalformed)
	errNotAuthentic  = fmt.Errorf("%w: packet does not authenticate", ErrMalformed)
	errReservedBits  = fmt.Errorf("%w: packet has reserved header bits set", ErrMalformed)
	errNoFrames      = fmt.Errorf("%w: packet has no frames", ErrMalformed)
	errOpensTwice    = fmt.Errorf("%w: Initial packet opens under the keys of two connection IDs, or two packet numbers", ErrMalformed)
	errTooManyCIDs   = fmt.Errorf("%w: Initial packet under the keys of a connection ID past the %d allowed", ErrMalformed, maxRememberedDCIDs)
	errNewCID        = fmt.Errorf("%w: Initial packet under the keys of a new connection ID after the decision, not a Retry's", ErrMalformed)
	errOtherConn     = fmt.Errorf("%w: coalesced Initial packet of another connection", ErrMalformed)
	errShortDatagram = fmt.Errorf("%w: datagram below the %d bytes required for Initial packets", ErrMalformed, MinInitialDatagram)
	errCoalesced     = fmt.Errorf("%w: datagram of more than %d coalesced long-header packets", ErrMalformed, maxCoalesced)
)

// notQUICf, malformedf and tooLargef build errors that wrap the sentinels.
func notQUICf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotQUIC, fmt.Sprintf(format, args...))
}

func malformedf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func tooLargef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrTooLarge, fmt.Sprintf(format, args...))
}
