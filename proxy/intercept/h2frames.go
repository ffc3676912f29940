package intercept

import "golang.org/x/net/http2"

// h2Frames follows the frame boundaries of what goproxy's HTTP/2 server
// writes to the client, so that the refusal goes between two frames, never
// into one, and the body bytes each stream's DATA frames carried into the
// client's connection (h2StreamNotes.dataOut).
type h2Frames struct {
	hdrN    int  // frame header bytes written
	left    int  // payload bytes of the frame still to write
	typ     byte // the frame's type and stream
	stream  uint32
	hdrDone bool // its header was just completed
	// An RST_STREAM's error code, or a GOAWAY's, as its payload comes,
	// how many of its 4 bytes came, and of the payload (paid); rstDone,
	// goAwayDone: the frame just ended (h2Unanswered.serverReset,
	// serverGoAway).
	code       uint32
	codeN      int
	last       uint32 // a GOAWAY's last stream id (h2goawaylast.go)
	paid       int
	rstDone    bool
	goAwayDone bool
	started    bool // the server has written something: its preface at least
	// final, when set, is written at the next frame boundary; after it
	// nothing more is.
	final  []byte
	sealed bool
	// The server's first frame, its SETTINGS, as patchSettings reads it:
	// bytes of it seen, its payload length, the setting's identifier.
	firstOff, firstLen int
	setID              uint16
	firstDone          bool
	// A DATA frame's payload length and whether it is padded (the
	// server never pads: one that did is not counted); dataDone: the
	// frame just ended.
	dataLen  int
	padded   bool
	dataDone bool
	// before is the notes' epoch as the write being followed began
	// (h2StreamNotes.dataOut).
	before uint64
}

// advance takes bytes written, and tells u of the streams the server
// answered in them (h2guard.go). It reports whether they held a reset u
// counted as the client's doing. It ends the write writeBegins began
// (h2bodyout.go).
func (f *h2Frames) advance(b []byte, u *h2Unanswered) (caused bool) {
	if u != nil {
		defer u.ends.writeEnds()
	}
	f.started = f.started || len(b) > 0
	for len(b) > 0 {
		b = b[f.step(b):]
		if f.hdrDone {
			f.hdrDone = false
			if f.typ == h2TypeHeaders {
				u.answered(f.stream)
			}
		}
		if f.rstDone {
			f.rstDone = false
			// A code is the payload's 4 bytes; one shorter (x/net never
			// writes it) says none, rather than a code of its bytes.
			code := http2.ErrCodeNo
			if f.codeN == 4 {
				code = http2.ErrCode(f.code)
			}
			caused = u.serverReset(f.stream, code) || caused
		}
		if f.dataDone {
			f.dataDone = false
			if u != nil && !f.padded {
				u.ends.dataOut(f.stream, f.dataLen, f.before) // h2bodyout.go
			}
		}
		if f.goAwayDone {
			f.goAwayDone = false
			if f.codeN == 4 {
				u.serverGoAway(f.last&(1<<31-1), http2.ErrCode(f.code)) // h2goawaylast.go
			}
		}
	}
	return caused
}

// step takes the start of b, up to the end of the frame header or payload
// being written, and returns how many bytes it took.
func (f *h2Frames) step(b []byte) int {
	if f.hdrN < h2FrameHeaderLen {
		if f.hdrN == 0 {
			f.code, f.codeN, f.paid, f.last = 0, 0, 0, 0
		}
		k := min(h2FrameHeaderLen-f.hdrN, len(b))
		for i := range k {
			switch p := f.hdrN + i; {
			case p < 3: // the 24-bit length comes first
				f.left = f.left<<8 | int(b[i])
			case p == 3:
				f.typ = b[i]
			case p == 4:
				f.padded = b[i]&0x8 != 0 // PADDED, for DATA
			case p == 5:
				f.stream = uint32(b[i]) & 0x7f
			case p > 5:
				f.stream = f.stream<<8 | uint32(b[i])
			}
		}
		f.hdrN += k
		if f.hdrN == h2FrameHeaderLen {
			f.hdrDone = true
			f.dataLen = f.left
			if f.left == 0 {
				f.hdrN = 0
				// An RST_STREAM with no payload ends here: taken, with
				// no code, as one with a payload is at its end.
				f.rstDone = f.typ == h2TypeRSTStream
			}
		}
		return k
	}
	k := min(f.left, len(b))
	if f.typ == h2TypeRSTStream || f.typ == h2TypeGoAway {
		// The code: an RST_STREAM's payload, a GOAWAY's after the last
		// stream's id.
		at := 0
		if f.typ == h2TypeGoAway {
			at = 4
		}
		for _, c := range b[:k] {
			switch {
			case f.paid < at:
				f.last = f.last<<8 | uint32(c)
			case f.codeN < 4:
				f.code, f.codeN = f.code<<8|uint32(c), f.codeN+1
			}
			f.paid++
		}
	}
	f.left -= k
	if f.left == 0 {
		f.hdrN = 0
		f.rstDone = f.typ == h2TypeRSTStream
		f.goAwayDone = f.typ == h2TypeGoAway
		f.dataDone = f.typ == h2TypeData
	}
	return k
}

// atBoundary reports whether the last frame written is whole.
func (f *h2Frames) atBoundary() bool { return f.hdrN == 0 && f.left == 0 }

// toBoundary returns how many bytes of b complete the frame being written:
// 0 at a boundary, len(b) if b does not complete it.
func (f *h2Frames) toBoundary(b []byte) int {
	if f.atBoundary() {
		return 0
	}
	g := *f
	n := 0
	for n < len(b) {
		n += g.step(b[n:])
		if g.atBoundary() {
			break
		}
	}
	return n
}
