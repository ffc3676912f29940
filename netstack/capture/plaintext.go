package capture

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// The decrypted side of bumped connections.
//
// The appliance decrypts every bumped TLS connection; an IDS on the mirror
// or the files sees only its TLS. With Config.Plaintext, each bumped
// connection's cleartext (the bytes the client sent inside TLS, and those
// it was sent back) is also written out as a TCP connection of its own,
// between the client's and the destination's real addresses and ports: a
// three-way handshake, the bytes as segments of at most an MSS, each
// acknowledged, correct sequence numbers and checksums, and a FIN each way
// at the end (or the client's RST, when it aborted).
//
// The client's port has its top bit flipped (PlaintextPortFlip): with the
// very 5-tuple of the wire connection, a reader that does not key flows on
// the VLAN or the pcap interface (Wireshark and tshark 4.0, Zeek by
// default, any IDS reading the files) would take the two for one TCP
// connection and make nonsense of both. Ephemeral ports are 32768 and up
// (Linux) or 49152 and up (Windows, BSD, macOS), so the flipped port is
// one no client picks by default; one that does (a hostile client, or
// clients behind a NAT using low ports) finds it taken: the stream then
// takes the next free port (plainport.go).
//
// It is marked so that it is never taken for wire traffic: in
// the files an interface of its own per endpoint ("vpce-…-plaintext") and
// a second comment on every packet; in the mirror a VLAN of its own per
// endpoint (the endpoint's VLAN plus PlaintextVLANOffset) and MAC
// addresses of its own. Its packets go through the same bounded queues as
// the wire packets: never blocking, dropped and counted when an output
// falls behind.

// PlaintextVLANOffset is added to an endpoint's VLAN ID for its plaintext
// streams on the mirror; with Config.Plaintext the mirror gives endpoints
// VLAN IDs 1 to MaxPlaintextVLANs, their plaintext 2001 to 4000.
const (
	PlaintextVLANOffset = 2000
	MaxPlaintextVLANs   = 2000
)

// PlaintextPortFlip is XORed into the client's port of a synthesized
// stream: client port 40318 appears as 7550, and the other way round.
const PlaintextPortFlip = 0x8000

// PlaintextComment is the second comment of each synthesized packet in the
// pcap files, after flow_cookie=0x…: frame.comment contains it.
const PlaintextComment = "gwlbproxy synthesized plaintext of a bumped TLS connection (not wire traffic)"

// plainSuffix ends the name of a pcap interface of synthesized packets.
const plainSuffix = "-plaintext"

// Segment sizes: a synthesized packet fits the queues' small slots and an
// Ethernet MTU (1500 bytes with its IP and TCP headers).
const (
	plainMSS4 = 1500 - 20 - 20
	plainMSS6 = 1500 - 40 - 20
	// plainWindow and plainWScale: the window advertised, 65535 << 7
	// (8 MiB); plainAckEvery segments of one write get an ACK.
	plainWindow   = 65535
	plainWScale   = 7
	plainAckEvery = 64
	plainTTL      = 64
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// PlaintextFlow names a bumped connection, as its access record does: the
// client's real port (the stream flips it).
type PlaintextFlow struct {
	Endpoint   string // the GWLB endpoint, vpce- and 17 hex digits
	FlowCookie string // the GWLB flow cookie, 8 hex digits
	Client     netip.AddrPort
	Dest       netip.AddrPort
	// Taken reports whether the flow table holds a flow of a key
	// (netstack.Server.HasFlow): a port it names is not the stream's.
	// nil: only the other streams' ports are avoided.
	Taken func(netstack.FlowKey) bool
}

// PlaintextStats counts the synthesized streams.
type PlaintextStats struct {
	Streams uint64 `json:"streams"` // bumped connections synthesized
	Packets uint64 `json:"packets"` // packets synthesized (each counted once, whatever the outputs)
	Bytes   uint64 `json:"bytes"`   // cleartext bytes carried in them
	// Dropped counts synthesized packets an output's queue had no room
	// for (also in that output's dropped): their streams have gaps.
	Dropped uint64 `json:"dropped"`
	// Collisions counts streams whose 5-tuple a wire flow or another
	// stream held on every port tried: written anyway, apart from it only
	// by the VLAN or the pcap interface.
	Collisions uint64 `json:"collisions"`
}

type plainCounters struct {
	streams, packets, bytes, dropped, collisions atomic.Uint64
}

// Stream is the plaintext of one bumped connection being synthesized. Its
// methods may be called from several goroutines at once (the connection's
// reader and writer); they never block on the outputs.
type Stream struct {
	c         *Capture
	endpoint  uint64
	cookie    uint32
	v6        bool
	client    [16]byte // IPv4 in its last four bytes
	dest      [16]byte
	cport     uint16
	dport     uint16
	tuple     plainTuple // reserved in c.ports until the stream is closed
	mss       int
	toPcap    bool // the pcap filters select the flow
	toMirror  bool
	pseudoSum uint16 // of the pseudo-header's addresses and protocol

	mu         sync.Mutex
	cseq, sseq uint32 // the next sequence number of each side
	cfin, sfin bool   // each side's FIN is out
	closed     bool
	// Coalescing (see data): dir is the side whose bytes are outstanding,
	// pend those of them not yet in a segment (less than an MSS), unacked
	// the segments of them not yet acknowledged; timer flushes them
	// plainFlushAfter after the first of them (armed: it is set).
	dir     bool
	pend    []byte
	unacked int
	timer   *time.Timer
	armed   bool
}

// plainFlushAfter is how long a side's bytes short of a segment wait, at
// most, for more before they are synthesized as they are (a Nagle timer,
// so a stream gets at most a segment and an ACK per side this often from
// writes too small to fill a segment): a client writing a
// request a byte per TLS record (about 22 bytes on the wire each) would
// otherwise get a segment and an ACK per byte, some 127 synthesized
// packets per wire segment, and crowd the wire packets out of the queues.
const plainFlushAfter = 5 * time.Millisecond

// scratch holds the buffers packets are built in, one per write in
// progress; a channel rather than a sync.Pool, which may drop what it is
// given back, so that a write allocates nothing in steady state.
var scratch = make(chan *[]byte, 64)

func getScratch() *[]byte {
	select {
	case b := <-scratch:
		return b
	default:
		b := make([]byte, 0, smallSlot)
		return &b
	}
}

func putScratch(b *[]byte) {
	select {
	case scratch <- b:
	default:
	}
}

// OpenPlaintext starts synthesizing a bumped connection: it emits the
// handshake and returns the stream its bytes go to. It returns nil when
// plaintext is off, the capture is closed, the flow is malformed, or no
// output takes it (the pcap filters select it not, and there is no
// mirror).
func (c *Capture) OpenPlaintext(f PlaintextFlow) *Stream {
	if c == nil || !c.plaintext || c.closed.Load() {
		return nil
	}
	endpoint, err := parseEndpoint(f.Endpoint)
	if err != nil {
		return nil
	}
	cookie, err := strconv.ParseUint(f.FlowCookie, 16, 32)
	if err != nil {
		return nil
	}
	ca, da := f.Client.Addr().Unmap(), f.Dest.Addr().Unmap()
	if !ca.IsValid() || !da.IsValid() || ca.Is4() != da.Is4() {
		return nil
	}
	s := &Stream{
		c: c, endpoint: endpoint, cookie: uint32(cookie), v6: !ca.Is4(),
		client: ca.As16(), dest: da.As16(), dport: f.Dest.Port(),
		mss: plainMSS4, toMirror: c.mirrorQ != nil,
	}
	if s.v6 {
		s.mss = plainMSS6
	}
	s.tuple = plainTuple{endpoint: endpoint, client: s.client, dest: s.dest, dport: s.dport}
	if c.ports.reserve(&s.tuple, s.v6, f.Client.Port(), f.Taken) {
		c.plain.collisions.Add(1)
	}
	s.cport = s.tuple.cport
	// As ParsePacket describes the client's packets (IPv4 addresses in
	// their IPv4-mapped form, as As16 gives them).
	p := netstack.Packet{IPv6: s.v6, Proto: 6, Src: s.client, Dst: s.dest, SrcPort: s.cport, DstPort: s.dport}
	s.toPcap = c.pcapQ != nil && (len(c.filters) == 0 || matchAny(c.filters, endpoint, false, &p))
	if !s.toPcap && !s.toMirror {
		c.ports.release(&s.tuple)
		return nil
	}
	s.pseudoSum = s.pseudoHeaderSum()
	s.dir = true
	s.pend = make([]byte, 0, s.mss)
	s.timer = time.AfterFunc(time.Hour, s.flushIdle)
	s.timer.Stop()
	// Initial sequence numbers: anything will do; from the cookie and
	// the ports, so that two streams differ.
	s.cseq = uint32(cookie)*2654435761 ^ uint32(s.cport)<<16 ^ uint32(s.dport)
	s.sseq = ^s.cseq * 40503
	c.plain.streams.Add(1)

	now := time.Now().UnixNano()
	bp := getScratch()
	s.mu.Lock()
	s.emit(bp, true, tcpSYN, nil, now)
	s.cseq++
	s.emit(bp, false, tcpSYN|tcpACK, nil, now)
	s.sseq++
	s.emit(bp, true, tcpACK, nil, now)
	s.mu.Unlock()
	putScratch(bp)
	return s
}

// parseEndpoint reads vpce- and 17 hex digits.
func parseEndpoint(name string) (uint64, error) {
	hex, ok := strings.CutPrefix(name, "vpce-")
	if !ok || len(hex) != 17 {
		return 0, fmt.Errorf("endpoint %q: want vpce- and 17 hex digits", name)
	}
	return strconv.ParseUint(hex, 16, 64)
}

// FromClient synthesizes b as sent by the client.
func (s *Stream) FromClient(b []byte) { s.data(true, b) }

// FromServer synthesizes b as sent to the client.
func (s *Stream) FromServer(b []byte) { s.data(false, b) }

// data synthesizes b as sent by one side. Bytes are coalesced per side:
// full segments go out as they fill, the rest waits, and the other side's
// ACK follows when the side's bytes are flushed (an IDS inspects a
// direction's bytes once they are acknowledged): when the other side sends,
// the stream ends, or plainFlushAfter after the first byte outstanding.
// Many small writes (TLS records of a byte) make about as few packets as
// one large.
func (s *Stream) data(fromClient bool, b []byte) {
	if len(b) == 0 {
		return
	}
	now := time.Now().UnixNano()
	bp := getScratch()
	defer putScratch(bp)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || (fromClient && s.cfin) || (!fromClient && s.sfin) {
		return
	}
	if fromClient != s.dir {
		s.flush(bp, now)
		s.dir = fromClient
	}
	s.c.plain.bytes.Add(uint64(len(b)))
	for len(b) > 0 {
		if len(s.pend) == 0 && len(b) >= s.mss {
			s.segment(bp, tcpACK, b[:s.mss], now)
			b = b[s.mss:]
			continue
		}
		n := min(s.mss-len(s.pend), len(b))
		s.pend = append(s.pend, b[:n]...)
		b = b[n:]
		if len(s.pend) == s.mss {
			s.segment(bp, tcpACK, s.pend, now)
			s.pend = s.pend[:0]
		}
	}
	if (len(s.pend) > 0 || s.unacked > 0) && !s.armed {
		s.armed = true
		s.timer.Reset(plainFlushAfter)
	}
}

// segment emits payload as one segment of side s.dir, and the other
// side's ACK after every plainAckEvery of them; s.mu is held.
func (s *Stream) segment(bp *[]byte, flags uint8, payload []byte, now int64) {
	s.emit(bp, s.dir, flags, payload, now)
	if s.dir {
		s.cseq += uint32(len(payload))
	} else {
		s.sseq += uint32(len(payload))
	}
	if s.unacked++; s.unacked == plainAckEvery {
		s.emit(bp, !s.dir, tcpACK, nil, now)
		s.unacked = 0
	}
}

// flush emits side s.dir's pending bytes, and the other side's ACK of
// what it has not acknowledged; s.mu is held.
func (s *Stream) flush(bp *[]byte, now int64) {
	if len(s.pend) > 0 {
		s.segment(bp, tcpACK|tcpPSH, s.pend, now)
		s.pend = s.pend[:0]
	}
	if s.unacked > 0 {
		s.emit(bp, !s.dir, tcpACK, nil, now)
		s.unacked = 0
	}
}

// flushIdle is the timer's: the side with bytes outstanding has been quiet
// for plainFlushAfter.
func (s *Stream) flushIdle() {
	bp := getScratch()
	defer putScratch(bp)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed = false
	if !s.closed {
		s.flush(bp, time.Now().UnixNano())
	}
}

// ClientClosed synthesizes the client's end of its data (its FIN,
// acknowledged): it closed its side of the connection.
func (s *Stream) ClientClosed() { s.sideClosed(true) }

// ServerClosed synthesizes the appliance's end of its side of the
// client's connection (its FIN, acknowledged): the client reads on, and
// may still send, until the connection ends.
func (s *Stream) ServerClosed() { s.sideClosed(false) }

// sideClosed emits one side's FIN after what it has pending.
func (s *Stream) sideClosed(fromClient bool) {
	bp := getScratch()
	defer putScratch(bp)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		now := time.Now().UnixNano()
		s.flush(bp, now)
		s.fin(bp, fromClient, now)
	}
}

// ClientReset synthesizes the client's abort: a RST from its side, and
// nothing after it (Close then adds no FIN). It is for a read from the
// client that ended in an error, a reset most often, rather than its FIN:
// an IDS should see the connection aborted, as it was, not closed cleanly.
func (s *Stream) ClientReset() { s.reset(true) }

// ServerReset synthesizes the appliance's abort of the client's
// connection: a RST from the destination's side, and nothing after it.
// It is for a connection the appliance reset (a write that stalled, a
// reload's deny, the shutdown, an answer delimited by the close that the
// destination cut short): an IDS shown FINs would take what came for
// whole.
func (s *Stream) ServerReset() { s.reset(false) }

// reset ends the stream with a RST from one side.
func (s *Stream) reset(fromClient bool) {
	bp := getScratch()
	defer putScratch(bp)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	now := time.Now().UnixNano()
	s.flush(bp, now)
	s.emit(bp, fromClient, tcpRST|tcpACK, nil, now)
	s.closed = true
	s.timer.Stop()
	s.c.ports.release(&s.tuple)
}

// Close ends the stream: a FIN each way that has not been sent yet, the
// destination's side first (the appliance closed the connection), each
// acknowledged. Bytes handed in afterwards are ignored.
func (s *Stream) Close() {
	bp := getScratch()
	defer putScratch(bp)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	now := time.Now().UnixNano()
	s.flush(bp, now)
	s.fin(bp, false, now)
	s.fin(bp, true, now)
	s.closed = true
	s.timer.Stop()
	s.c.ports.release(&s.tuple)
}

// fin emits one side's FIN and its acknowledgement, once; s.mu is held.
func (s *Stream) fin(bp *[]byte, fromClient bool, now int64) {
	if fromClient {
		if s.cfin {
			return
		}
		s.cfin = true
		s.emit(bp, true, tcpFIN|tcpACK, nil, now)
		s.cseq++
	} else {
		if s.sfin {
			return
		}
		s.sfin = true
		s.emit(bp, false, tcpFIN|tcpACK, nil, now)
		s.sseq++
	}
	s.emit(bp, !fromClient, tcpACK, nil, now)
}

// emit builds one packet in *bp and queues it for the outputs; s.mu is
// held.
func (s *Stream) emit(bp *[]byte, fromClient bool, flags uint8, payload []byte, now int64) {
	if s.c.closed.Load() {
		return
	}
	pkt := s.build((*bp)[:0], fromClient, flags, payload)
	*bp = pkt[:0]
	s.c.plain.packets.Add(1)
	out := !fromClient // as a wire packet: a reply goes out to the GWLB
	if s.toMirror && !s.c.mirrorQ.put(s.endpoint, s.cookie, out, true, now, pkt) {
		s.c.plain.dropped.Add(1)
	}
	if s.toPcap && !s.c.pcapQ.put(s.endpoint, s.cookie, out, true, now, pkt) {
		s.c.plain.dropped.Add(1)
	}
}

// build appends an IPv4 or IPv6 packet with a TCP segment to b.
func (s *Stream) build(b []byte, fromClient bool, flags uint8, payload []byte) []byte {
	src, dst, sport, dport, seq, ack := s.client, s.dest, s.cport, s.dport, s.cseq, s.sseq
	if !fromClient {
		src, dst, sport, dport, seq, ack = s.dest, s.client, s.dport, s.cport, s.sseq, s.cseq
	}
	optLen := 0
	if flags&tcpSYN != 0 {
		optLen = 8 // MSS, NOP, window scale
	}
	tcpLen := 20 + optLen + len(payload)
	be := binary.BigEndian
	ipStart := len(b)
	if s.v6 {
		b = be.AppendUint32(b, 6<<28)
		b = be.AppendUint16(b, uint16(tcpLen))
		b = append(b, 6, plainTTL)
		b = append(b, src[:]...)
		b = append(b, dst[:]...)
	} else {
		b = append(b, 0x45, 0)
		b = be.AppendUint16(b, uint16(20+tcpLen))
		b = append(b, 0, 0, 0x40, 0) // ID 0, don't fragment
		b = append(b, plainTTL, 6, 0, 0)
		b = append(b, src[12:]...)
		b = append(b, dst[12:]...)
		checksum.Put(b[ipStart+10:], ^checksum.Checksum(b[ipStart:ipStart+20], 0))
	}
	tcpStart := len(b)
	b = be.AppendUint16(b, sport)
	b = be.AppendUint16(b, dport)
	b = be.AppendUint32(b, seq)
	if flags&tcpACK == 0 {
		ack = 0
	}
	b = be.AppendUint32(b, ack)
	b = append(b, byte((20+optLen)/4)<<4, flags)
	b = be.AppendUint16(b, plainWindow)
	b = append(b, 0, 0, 0, 0) // checksum, urgent pointer
	if optLen > 0 {
		b = append(b, 2, 4)
		b = be.AppendUint16(b, uint16(s.mss))
		b = append(b, 1, 3, 3, plainWScale)
	}
	b = append(b, payload...)
	sum := checksum.Combine(s.pseudoSum, uint16(tcpLen))
	checksum.Put(b[tcpStart+16:], ^checksum.Checksum(b[tcpStart:], sum))
	return b
}

// pseudoHeaderSum sums the TCP pseudo-header's addresses and protocol (its
// length is added per packet).
func (s *Stream) pseudoHeaderSum() uint16 {
	var sum uint16
	if s.v6 {
		sum = checksum.Checksum(s.client[:], 0)
		sum = checksum.Checksum(s.dest[:], sum)
	} else {
		sum = checksum.Checksum(s.client[12:], 0)
		sum = checksum.Checksum(s.dest[12:], sum)
	}
	return checksum.Combine(sum, 6)
}
