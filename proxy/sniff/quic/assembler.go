package quic

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
)

// Bounds on one client's Initial flight.
const (
	// MaxDatagrams is how many datagrams an Assembler reads before giving
	// up on a ClientHello. Real ones take one to three datagrams plus
	// retransmissions; the bound keeps a client that never finishes from
	// holding the caller's buffers.
	MaxDatagrams = 16
	// MinInitialDatagram is the size below which a datagram carrying a
	// client's Initial is refused. Clients must pad such datagrams to 1200
	// bytes and servers must discard shorter ones (RFC 9000 §14.1), so a
	// short one is not something the server will read.
	MinInitialDatagram = 1200
	// maxPooledScratch and maxPooledFrames bound the scratch space given
	// back to scratchPool: enough for the usual Initial of a datagram of
	// about 1,200 to 1,500 bytes (twice over: see readInitial), so that
	// reading one allocates nothing. A larger one gets scratch space of
	// its own, dropped once it is read.
	maxPooledScratch = 4 << 10
	maxPooledFrames  = 64
	// maxRememberedDCIDs bounds the connection IDs whose keys opened a
	// packet of the flow (see Assembler.known). A real client needs one or
	// two (its first DCID, and a Retry's); an Initial under the keys of one
	// more is refused.
	maxRememberedDCIDs = 4
	// maxCoalesced bounds the long-header packets of one datagram. A
	// client coalesces at most one packet of each long-header type it
	// sends, Initial, 0-RTT and Handshake (RFC 9000 §12.2 orders them by
	// encryption level), so no client sends a datagram of more. It
	// bounds the work one datagram costs: each Initial is opened under
	// several keys (see readInitial), and a datagram of many small ones,
	// each opened again and again, cost over 200 µs in Belongs, on the
	// packet path.
	maxCoalesced = 3
)

// TLS record framing used to hand the reassembled handshake message to
// sniff.ParseClientHello, which reads TLS records.
const (
	recordTypeHandshake = 0x16
	recordHeaderLen     = 5
	maxRecordPayload    = 1 << 14
	handshakeHeaderLen  = 4
	typeClientHello     = 1
)

// Assembler collects one client's Initial packets until their CRYPTO frames
// hold the whole ClientHello. The zero value is ready to use. It is not safe
// for concurrent use.
//
// Feed it the client-to-server datagrams of one flow in the order they
// arrive; the packets may carry the ClientHello's bytes in any order, with
// retransmissions. A datagram that Add refuses leaves the reassembled data
// as it was, so a caller may skip it (for example one forged by a third
// party) and go on, within MaxDatagrams.
type Assembler struct {
	datagrams int
	done      bool
	hello     sniff.ClientHello

	stream cryptoStream
	keys   keyCache
	// known are the Destination Connection IDs whose keys opened a packet,
	// oldest first, each with the largest packet number its keys opened.
	// Once the server answers, the client addresses it by a new DCID but
	// keeps protecting Initial packets with the keys of its first DCID (or
	// a Retry's, RFC 9001 §5.2), so these keys are tried for every packet.
	// Packet numbers are decoded per connection ID, as the server of each
	// connection does: never against a number another connection's packet
	// raised.
	known  [maxRememberedDCIDs]knownCID
	nknown int
	// retried is set once a connection ID was admitted after the
	// decision: a Retry's (see readInitial). A server sends at most one
	// Retry (a client accepts at most one, RFC 9000 §17.2.5.2).
	retried bool

	// open is openPacket's working space, a few bytes kept to spare
	// allocations. The rest of a call's working space is a scratch,
	// held only during the call.
	open openScratch
}

// scratch is the working space of one call of Add or Belongs: a private
// copy of each Initial to decrypt in place (twice over: see readInitial),
// the CRYPTO frames found, and the stream state to roll back to. It comes
// from scratchPool and goes back at the end of the call, so that an
// Assembler holds none between datagrams. It kept its own: one waiting for
// the rest of its ClientHello held twice its largest Initial (48 KiB for
// one of 24 KB reassembled from IP fragments), and one client may keep a
// thousand flows waiting at the QUIC gate (proxy/quic.go).
type scratch struct {
	buf    []byte
	frames []cryptoFrame
	saved  []chunk
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

// release gives s back to scratchPool, reset.
func (s *scratch) release() {
	s.reset()
	scratchPool.Put(s)
}

// reset readies s for the pool. What it found points into the datagram's
// decrypted copy (frames) and into an Assembler's stream (saved): both are
// cleared, so that the pool keeps no flow's bytes alive, and space past the
// usual Initial's is dropped.
func (s *scratch) reset() {
	if cap(s.buf) > maxPooledScratch {
		s.buf = nil
	}
	// Every packet of a datagram reuses frames from the start: entries
	// past the last one's count may hold an earlier one's.
	if cap(s.frames) > maxPooledFrames {
		s.frames = nil
	}
	clear(s.frames[:cap(s.frames)])
	clear(s.saved) // filled once a call, from the start
	s.frames, s.saved = s.frames[:0], s.saved[:0]
}

// Add feeds one client-to-server UDP datagram. It returns done == true with
// the parsed hello when the ClientHello is complete, and done == false with
// a nil error when more datagrams are needed. Once done, further calls
// return the same hello without reading their datagram.
//
// Errors wrap ErrNotQUIC when the datagram does not start with a QUIC v1/v2
// client packet, ErrTooLarge past the bounds (MaxDatagrams, MaxCryptoLen),
// and ErrMalformed otherwise (a datagram of more than three coalesced
// long-header packets included); an unreadable ClientHello also wraps the
// sniff package's error. A datagram of only 0-RTT or Handshake packets of a
// supported version carries nothing to read and is not an error.
//
// hello comes from sniff.ParseClientHello applied to the handshake message
// wrapped in synthetic TLS records (QUIC has no record layer), so its
// record-level fields describe those records; ServerName, ALPN and the
// fields read from the message itself are the client's.
//
// Add neither modifies nor retains datagram.
func (a *Assembler) Add(datagram []byte) (hello sniff.ClientHello, done bool, err error) {
	if a.done {
		return a.hello, true, nil
	}
	if a.datagrams >= MaxDatagrams {
		return sniff.ClientHello{}, false, tooLargef("no complete ClientHello in %d datagrams", a.datagrams)
	}
	a.datagrams++

	// Everything below may fail half-way: remember the state to go back to.
	sc := getScratch()
	defer sc.release()
	sc.saved = append(sc.saved[:0], a.stream.chunks...)
	known, nknown := a.known, a.nknown

	at, typ, err := a.read(datagram, sc)
	if err != nil && at >= 0 {
		err = packetError(at, typ, err)
	}
	if err == nil {
		hello, done, err = a.tryParse()
	}
	if err != nil {
		a.stream.chunks = append(a.stream.chunks[:0], sc.saved...)
		a.known, a.nknown = known, nknown
		return sniff.ClientHello{}, false, fmt.Errorf("datagram %d: %w", a.datagrams, err)
	}
	// What the datagram added is kept at its size: the caller holds the
	// Assembler while it waits for the rest, and for the flow's lifetime.
	a.stream.trim()
	if done {
		a.finish(hello)
	}
	return hello, done, nil
}

// read decrypts the Initial packets of datagram and adds their CRYPTO data
// to the stream. When a packet fails, at and typ say where it sits and what
// it is (Add reports them; Belongs, on the packet path, spares building the
// message); at is -1 when the datagram as a whole fails.
func (a *Assembler) read(datagram []byte, sc *scratch) (at int, typ packetType, err error) {
	first, err := parseLongHeader(datagram)
	if err != nil {
		return -1, 0, err
	}

	// Walk the coalesced packets (RFC 9000 §12.2) for as long as their
	// headers parse. A short-header packet or padding (zero bytes) ends
	// the walk, and so does a header that does not parse: the server
	// cannot find where such a packet ends either. Only the first
	// packet's header is required to parse.
	//
	// A packet of another version or connection ID is skipped, not an end
	// of the walk: receivers should ignore it (RFC 9000 §12.2), and a
	// server that skips just that packet reads on, so an Initial of the
	// first packet's connection behind it is read here as well. An
	// Initial of another connection, wherever it sits, is refused: a
	// server that does not ignore it would start a connection nobody
	// decided on, and refusing it while the ClientHello is read as well as
	// after keeps it out of the datagrams held for the decision.
	//
	// Every long header that parses counts towards maxCoalesced, those
	// skipped included, and a datagram past it is refused before any of
	// its packets is decrypted.
	var (
		pkts [maxCoalesced]longHeader
		offs [maxCoalesced]int
		n    int
	)
	h := first
	for off := 0; ; {
		if n == maxCoalesced {
			return off, h.typ, errCoalesced
		}
		pkts[n], offs[n] = h, off
		n++
		own := h.version == first.version && bytes.Equal(h.dcid, first.dcid)
		if h.typ == typeInitial {
			if !own {
				return off, h.typ, errOtherConn
			}
			if len(datagram) < MinInitialDatagram {
				return off, h.typ, errShortDatagram
			}
		}
		off += h.end
		if off >= len(datagram) || datagram[off]&headerFormLong == 0 {
			break
		}
		var err error
		if h, err = parseLongHeader(datagram[off:]); err != nil {
			break
		}
	}
	for i, h := range pkts[:n] {
		if h.typ != typeInitial {
			continue
		}
		if cap(sc.buf) < 2*h.end {
			sc.buf = make([]byte, 2*h.end)
		}
		off := offs[i]
		if err := a.readInitial(datagram[off:off+h.end], sc.buf[:h.end], sc.buf[h.end:2*h.end], h, &sc.frames); err != nil {
			return off, h.typ, err
		}
	}
	return -1, 0, nil
}

// knownCID is a Destination Connection ID whose keys opened a packet of the
// flow, with the largest packet number they opened.
type knownCID struct {
	dcid    []byte
	largest int64
}

// readInitial decrypts one Initial packet and adds its CRYPTO frames to the
// stream. buf and spare are scratch areas as long as pkt, and frames is
// where the CRYPTO frames found go.
//
// The packet is read every way a server could read it, and must open in
// exactly one. The client knows every key involved and AES-GCM does not
// commit to its key, so one ciphertext can be built to open under two keys:
// say as a harmless ACK under the keys of the connection decided on, and as
// a ClientHello for another name under the keys of its own, new, DCID. A
// server that meets that DCID for the first time reads it only the second
// way. So every packet is opened under its own DCID's keys with no packet
// number seen (as such a server would), and under the keys of each known
// DCID with that DCID's largest packet number (as the server of that
// connection would); a packet that opens in two of these ways is refused,
// and the one way it opens is the one whose CRYPTO data is checked.
func (a *Assembler) readInitial(pkt, buf, spare []byte, h longHeader, frames *[]cryptoFrame) error {
	var (
		payload []byte
		pn      uint64
		pnBits  int
		opened  = -2 // -1: own keys, read fresh; i >= 0: a.known[i]'s
		openErr error
	)
	own := -1 // h.dcid's place in a.known
	for i := range a.nknown {
		if bytes.Equal(a.known[i].dcid, h.dcid) {
			own = i
		}
	}
	for i := -1; i < a.nknown; i++ {
		dcid, largest := h.dcid, int64(-1)
		if i >= 0 {
			dcid, largest = a.known[i].dcid, a.known[i].largest
			if i == own && opened == -1 && decodePacketNumber(largest, pn&(1<<pnBits-1), pnBits) == pn {
				continue // the same reading as the fresh one, which opened
			}
		}
		k, err := a.keys.get(h.version, dcid)
		if err != nil {
			return malformedf("deriving Initial keys: %v", err)
		}
		copy(buf, pkt) // a failed attempt leaves buf scrambled
		p, n, err := openPacket(buf, h.pnOffset, k, largest, &a.open)
		if err != nil {
			openErr = err
			continue
		}
		if opened != -2 {
			return errOpensTwice
		}
		opened, payload, pn, pnBits = i, p, n, 8*(int(buf[0]&pnLenBits)+1)
		buf, spare = spare, buf // keep payload; go on in the other area
	}
	if opened == -2 {
		return openErr // the last trial's: every one failed
	}
	if opened == -1 {
		opened = own
	}
	var err error
	*frames, err = parseFrames(payload, (*frames)[:0])
	if err != nil {
		return fmt.Errorf("packet number %d: %w", pn, err)
	}
	if opened < 0 {
		// Keys of a connection ID not seen before. While the
		// ClientHello is read, that is the client's first DCID. After
		// the decision, the only new one a client protects its Initials
		// with is a Retry's (RFC 9001 §5.2): once, and in an Initial
		// that carries the Retry's token and its ClientHello again (the
		// Retry was not acknowledged, so there is nothing else to send;
		// the CRYPTO data is checked against the ClientHello below).
		// Anything else is a new connection, and each connection ID
		// kept adds a trial open to every Initial of the flow.
		if a.done {
			if a.retried || len(h.token) == 0 || len(*frames) == 0 {
				return errNewCID
			}
			a.retried = true
		}
		if a.nknown == len(a.known) {
			return errTooManyCIDs
		}
		a.known[a.nknown] = knownCID{dcid: bytes.Clone(h.dcid), largest: -1}
		opened = a.nknown
		a.nknown++
	}
	a.known[opened].largest = max(a.known[opened].largest, int64(pn))

	more := 0 // what the frames after f carry: see insert
	for _, f := range *frames {
		more += len(f.data)
	}
	for _, f := range *frames {
		more -= len(f.data)
		if err := a.stream.insert(f.offset, f.data, more); err != nil {
			return fmt.Errorf("packet number %d: %w", pn, err)
		}
	}
	return nil
}

// tryParse parses the ClientHello once the stream holds all of it. It
// checks the handshake header as soon as it is present, so that a stream
// that is not a ClientHello, or one too large, is refused early.
func (a *Assembler) tryParse() (sniff.ClientHello, bool, error) {
	have := a.stream.prefixLen()
	if have == 0 {
		return sniff.ClientHello{}, false, nil
	}
	var hdr [handshakeHeaderLen]byte
	got := a.stream.appendRange(hdr[:0], 0, min(have, handshakeHeaderLen))
	if got[0] != typeClientHello {
		return sniff.ClientHello{}, false, malformedf("CRYPTO stream starts with handshake message type %d, not ClientHello", got[0])
	}
	if have < handshakeHeaderLen {
		return sniff.ClientHello{}, false, nil
	}
	msgLen := handshakeHeaderLen + (int(got[1])<<16 | int(got[2])<<8 | int(got[3]))
	if msgLen > MaxCryptoLen {
		return sniff.ClientHello{}, false, tooLargef("ClientHello of %d bytes exceeds %d", msgLen, MaxCryptoLen)
	}
	if end := a.stream.end(); end > msgLen {
		// Before the server answers, a client's Initial CRYPTO stream
		// holds its ClientHello and nothing else. What follows it is
		// where a second ClientHello goes after a HelloRetryRequest: a
		// server that takes that one without checking it against the
		// first would handshake on a name nobody decided on, so it is
		// refused here, and (the stream then ending at the ClientHello)
		// by Belongs after the decision.
		return sniff.ClientHello{}, false, malformedf("CRYPTO data up to offset %d past the %d-byte ClientHello", end, msgLen)
	}
	if have < msgLen {
		return sniff.ClientHello{}, false, nil
	}

	// Wrap the message in handshake records of at most 2^14 bytes each,
	// the framing TLS over TCP would have used. Made once a flow: Add
	// reads no datagram after the ClientHello is complete.
	nrec := (msgLen + maxRecordPayload - 1) / maxRecordPayload
	rec := make([]byte, 0, msgLen+nrec*recordHeaderLen)
	for from := 0; from < msgLen; from += maxRecordPayload {
		to := min(from+maxRecordPayload, msgLen)
		n := to - from
		rec = append(rec, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		rec = a.stream.appendRange(rec, from, to)
	}
	hello, err := sniff.ParseClientHello(rec)
	if err != nil {
		return sniff.ClientHello{}, false, fmt.Errorf("%w: ClientHello: %w", ErrMalformed, err)
	}
	return hello, true, nil
}

// finish records the result. The caller may keep the Assembler for the
// flow's lifetime: the stream, the keys and the connection IDs stay, for
// Belongs, and it holds no scratch space between calls.
func (a *Assembler) finish(hello sniff.ClientHello) {
	a.done, a.hello = true, hello
}

// Belongs reports whether a client datagram that arrives after the
// ClientHello was read can be relayed without starting a connection past
// the decision made on that ClientHello. A server starts a connection only
// on an Initial packet carrying a ClientHello: a datagram without Initial
// packets (short header, 0-RTT, Handshake) belongs. One with Initial packets
// belongs when each opens in exactly one way (under the keys of its own DCID
// read as a new connection's server would, or under those of a DCID seen
// before, its packet number decoded as that connection's server would; see
// readInitial) and any CRYPTO data in them repeats bytes of the ClientHello
// read: a retransmission, an ACK, or the same ClientHello again after a
// Retry, under the keys of the Retry's connection ID, which would be decided
// the same way. A different ClientHello (under any keys, or coalesced behind
// another connection's packet), CRYPTO data past the one read, an Initial
// under the keys of a new connection ID other than a Retry's (an Initial
// with a token and CRYPTO data, once), a datagram of more than three
// coalesced long-header packets, and a long header that does not parse or is
// of a version not read here, do not belong. False before the ClientHello is
// complete.
//
// Belongs runs on the packet path: the trial opens that fail by design (see
// readInitial) build no error, and a datagram's cost is bounded by its size
// times the connection IDs kept, plus the derivation of one connection ID's
// keys when its Initials are under one not seen before.
func (a *Assembler) Belongs(datagram []byte) bool {
	if !a.done {
		return false
	}
	if len(datagram) == 0 || datagram[0]&headerFormLong == 0 {
		return true
	}
	sc := getScratch()
	defer sc.release()
	sc.saved = append(sc.saved[:0], a.stream.chunks...)
	held := a.stream.size()
	known, nknown, retried := a.known, a.nknown, a.retried
	_, _, err := a.read(datagram, sc)
	if err == nil && a.stream.size() == held {
		// After a Retry, the client protects its Initials with keys of
		// the Retry's connection ID, also once it addresses the
		// server's: read keeps them, as Add does, for its ACKs to come.
		return true
	}
	a.stream.chunks = append(a.stream.chunks[:0], sc.saved...)
	a.known, a.nknown, a.retried = known, nknown, retried
	return false
}
