package quic

import (
	"encoding/binary"
	"fmt"
)

// Header protection (RFC 9001 §5.4): the mask is AES-ECB of a 16-byte sample
// of ciphertext taken as if the packet number were 4 bytes long.
const (
	sampleLen    = 16
	maxPNLen     = 4
	longHPMask   = 0x0f // bits of a long header's first byte that are masked
	reservedBits = 0x0c // must be zero once protection is removed
	pnLenBits    = 0x03
)

// openScratch is openPacket's working space, kept by the caller: the mask
// and the nonce go through interface calls (cipher.Block, cipher.AEAD), so
// as locals they would escape to the heap, two allocations for every trial
// open on the packet path.
type openScratch struct {
	mask  [sampleLen]byte
	nonce [12]byte
}

// openPacket removes header and packet protection from pkt, a private copy
// of one Initial packet (header included) that it modifies in place, with
// pnOffset from its header, and s as working space. largest is the largest
// packet number decrypted so far in the Initial space, or -1. It returns the
// plaintext payload, which aliases pkt, and the full packet number. Its
// errors are preallocated: a failed open is the usual outcome of a trial
// under the wrong keys.
func openPacket(pkt []byte, pnOffset int, k *initialKeys, largest int64, s *openScratch) ([]byte, uint64, error) {
	sampleOff := pnOffset + maxPNLen
	if sampleOff+sampleLen > len(pkt) {
		return nil, 0, errNoSample
	}
	mask := &s.mask
	k.hp.Encrypt(mask[:], pkt[sampleOff:sampleOff+sampleLen])

	pkt[0] ^= mask[0] & longHPMask
	pnLen := int(pkt[0]&pnLenBits) + 1
	var truncated uint64
	for i := range pnLen {
		pkt[pnOffset+i] ^= mask[1+i]
		truncated = truncated<<8 | uint64(pkt[pnOffset+i])
	}
	pn := decodePacketNumber(largest, truncated, pnLen*8)

	// The nonce is the IV with the packet number XORed into its low bytes
	// (RFC 9001 §5.3).
	nonce := &s.nonce
	*nonce = k.iv
	var pnBytes [8]byte
	binary.BigEndian.PutUint64(pnBytes[:], pn)
	for i := range pnBytes {
		nonce[4+i] ^= pnBytes[i]
	}

	hdrEnd := pnOffset + pnLen
	ct := pkt[hdrEnd:]
	payload, err := k.aead.Open(ct[:0], nonce[:], ct, pkt[:hdrEnd])
	if err != nil {
		return nil, 0, errNotAuthentic
	}
	// Checked only now: before authentication the bits are indistinguishable
	// from a wrong key (RFC 9001 §5.4.1 requires this order).
	if pkt[0]&reservedBits != 0 {
		return nil, 0, errReservedBits
	}
	if len(payload) == 0 {
		return nil, 0, errNoFrames
	}
	return payload, pn, nil
}

// decodePacketNumber recovers a full packet number from its truncated
// encoding of bits bits, choosing the value closest to the one expected
// after largest (RFC 9000 §17.1 and Appendix A.3).
func decodePacketNumber(largest int64, truncated uint64, bits int) uint64 {
	expected := uint64(largest + 1)
	win := uint64(1) << bits
	hwin := win / 2
	mask := win - 1
	candidate := expected&^mask | truncated
	switch {
	case candidate+hwin <= expected && candidate < 1<<62-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// packetError adds the packet's position in its datagram to err.
func packetError(off int, typ packetType, err error) error {
	return fmt.Errorf("%s packet at byte %d: %w", typ, off, err)
}
