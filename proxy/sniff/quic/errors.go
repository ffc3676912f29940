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
