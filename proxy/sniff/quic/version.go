package quic

// QUIC versions this package can read.
const (
	// Version1 is QUIC version 1 (RFC 9000).
	Version1 uint32 = 0x00000001
	// Version2 is QUIC version 2 (RFC 9369).
	Version2 uint32 = 0x6b3343cf
)

// packetType is a long-header packet type, independent of how a version
// encodes it on the wire.
type packetType uint8

const (
	typeInitial packetType = iota
	typeZeroRTT
	typeHandshake
	typeRetry
)

func (t packetType) String() string {
	switch t {
	case typeInitial:
		return "Initial"
	case typeZeroRTT:
		return "0-RTT"
	case typeHandshake:
		return "Handshake"
	default:
		return "Retry"
	}
}

// versionParams holds what differs between the supported versions for
// Initial packets: the salt and labels of the key schedule (RFC 9001 §5.2,
// RFC 9369 §3.3) and the encoding of the long packet type (RFC 9369 §3.2,
// which changed it so that middleboxes ossified on v1 do not misread v2).
type versionParams struct {
	salt                       []byte
	keyLabel, ivLabel, hpLabel string
	types                      [4]packetType // indexed by the type bits 0x30 of the first byte
}

var (
	paramsV1 = versionParams{
		salt: []byte{
			0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
			0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
		},
		keyLabel: "quic key",
		ivLabel:  "quic iv",
		hpLabel:  "quic hp",
		types:    [4]packetType{typeInitial, typeZeroRTT, typeHandshake, typeRetry},
	}
	paramsV2 = versionParams{
		salt: []byte{
			0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
			0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
		},
		keyLabel: "quicv2 key",
		ivLabel:  "quicv2 iv",
		hpLabel:  "quicv2 hp",
		types:    [4]packetType{typeRetry, typeInitial, typeZeroRTT, typeHandshake},
	}
)

// paramsFor returns the parameters of a supported version.
func paramsFor(version uint32) (*versionParams, bool) {
	switch version {
	case Version1:
		return &paramsV1, true
	case Version2:
		return &paramsV2, true
	}
	return nil, false
}
