package quic

import (
	"bytes"
	"slices"
	"sort"
)

// Bounds on one client's CRYPTO stream.
const (
	// MaxCryptoLen is the largest CRYPTO stream offset (exclusive) that the
	// Assembler keeps: the ClientHello, with its 4-byte handshake header,
	// must fit below it. It matches the 64 KiB that crypto/tls (and the
	// sniff package) accept for a ClientHello.
	MaxCryptoLen = 64 << 10
	// maxChunks bounds how fragmented the stream may be. Data arriving in
	// order is appended to the chunk before it, so a real client needs
	// about one chunk per gap; a client that sends tiny frames out of
	// order is refused instead of costing a slice header per byte.
	maxChunks = 128
)

// chunk is a run of stream bytes starting at off.
type chunk struct {
	off  int
	data []byte
}

func (c chunk) end() int { return c.off + len(c.data) }

// cryptoStream reassembles the CRYPTO stream of the Initial packet number
// space. It keeps copies of the data, sorted by offset and never
// overlapping, so memory follows the bytes received, not the offsets
// claimed.
type cryptoStream struct {
	chunks []chunk
	gaps   [][2]int // scratch for insert
}

// insert adds a frame's data at off. Bytes already held must match (RFC 9000
// §19.6: data at an offset must not change; accepting a change would let a
// client show us one ClientHello and the server another). It copies data.
// more is what the frames still to be inserted with it (those after it in
// its packet) carry: a chunk that must grow grows once by what they and
// the rest of this frame may add to it (see grow). On error the stream may
// hold part of the frame; the Assembler rolls back.
func (s *cryptoStream) insert(off uint64, data []byte, more int) error {
	end := off + uint64(len(data)) // off < 2^62 and data is small: no overflow
	if end > MaxCryptoLen {
		return tooLargef("CRYPTO data up to offset %d exceeds %d bytes", end, MaxCryptoLen)
	}
	if len(data) == 0 {
		return nil
	}
	o, e := int(off), int(end)

	// Compare against the chunks that overlap [o, e) and note the gaps
	// between them, which are the new bytes.
	s.gaps = s.gaps[:0]
	cur := o
	i := sort.Search(len(s.chunks), func(j int) bool { return s.chunks[j].end() > o })
	for ; i < len(s.chunks) && s.chunks[i].off < e; i++ {
		c := s.chunks[i]
		if cur < c.off {
			s.gaps = append(s.gaps, [2]int{cur, c.off})
		}
		lo, hi := max(cur, c.off), min(e, c.end())
		if !bytes.Equal(data[lo-o:hi-o], c.data[lo-c.off:hi-c.off]) {
			return malformedf("CRYPTO data at offsets %d-%d differs from data received before", lo, hi)
		}
		cur = hi
	}
	if cur < e {
		s.gaps = append(s.gaps, [2]int{cur, e})
	}

	for _, g := range s.gaps {
		piece := data[g[0]-o : g[1]-o]
		j := sort.Search(len(s.chunks), func(j int) bool { return s.chunks[j].off > g[0] })
		if j > 0 && s.chunks[j-1].end() == g[0] {
			// The common, in-order case: extend the chunk before.
			if cap(s.chunks[j-1].data)-len(s.chunks[j-1].data) < len(piece) {
				s.grow(j-1, e-g[0]+more)
			}
			s.chunks[j-1].data = append(s.chunks[j-1].data, piece...)
			continue
		}
		if len(s.chunks) >= maxChunks {
			return tooLargef("CRYPTO data in more than %d pieces", maxChunks)
		}
		s.chunks = slices.Insert(s.chunks, j, chunk{off: g[0], data: exactCopy(piece)})
	}
	return nil
}

// grow makes room in chunk i for up to n more bytes, what the frames being
// inserted may still add, but no more than fits before the next chunk (or
// MaxCryptoLen): a packet's frames extend a chunk with one copy of it, and
// all the chunks they extend are given room for MaxCryptoLen bytes at
// most, however they interleave. Grown by append's rule instead, a chunk
// kept up to a quarter more than its bytes (twice, small), and, trimmed
// after each datagram, would be copied twice a datagram. What stays empty
// (data held already, or another chunk's) is trimmed.
func (s *cryptoStream) grow(i, n int) {
	c := s.chunks[i]
	limit := MaxCryptoLen - c.end()
	if i+1 < len(s.chunks) {
		limit = s.chunks[i+1].off - c.end()
	}
	grown := make([]byte, len(c.data), len(c.data)+min(n, limit))
	copy(grown, c.data)
	s.chunks[i].data = grown
}

// trim gives back the room left past each chunk's bytes: insert grows a
// chunk by what a packet's frames may add, and some of it may stay empty.
// The Assembler trims the stream once a datagram is read, so that a flow
// waiting for the rest of its ClientHello (or, once decided, keeping it for
// Belongs) holds the bytes it was sent and no more.
func (s *cryptoStream) trim() {
	for i, c := range s.chunks {
		if cap(c.data) > len(c.data) {
			s.chunks[i].data = exactCopy(c.data)
		}
	}
}

// exactCopy is a copy of b with no room past its bytes (cap == len), so
// that trim leaves it as it is.
func exactCopy(b []byte) []byte {
	c := make([]byte, len(b))
	copy(c, b)
	return c
}

// size returns how many stream bytes are held.
func (s *cryptoStream) size() int {
	n := 0
	for _, c := range s.chunks {
		n += len(c.data)
	}
	return n
}

// end returns the offset just past the last byte held, 0 when none is.
func (s *cryptoStream) end() int {
	if len(s.chunks) == 0 {
		return 0
	}
	return s.chunks[len(s.chunks)-1].end()
}

// prefixLen returns how many bytes from offset 0 are held without a gap.
func (s *cryptoStream) prefixLen() int {
	n := 0
	for _, c := range s.chunks {
		if c.off != n {
			break
		}
		n = c.end()
	}
	return n
}

// appendRange appends stream bytes [from, to) to dst; the range must lie
// within prefixLen.
func (s *cryptoStream) appendRange(dst []byte, from, to int) []byte {
	for _, c := range s.chunks {
		if c.end() <= from {
			continue
		}
		if c.off >= to {
			break
		}
		dst = append(dst, c.data[max(from, c.off)-c.off:min(to, c.end())-c.off]...)
	}
	return dst
}
