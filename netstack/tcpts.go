package netstack

// The handshake's last ACK and timestamps. gVisor enables timestamps on a
// connection when the client's SYN offers them (RFC 7323), and then, in
// SYN-RECEIVED, drops every segment with ACK that carries no timestamp
// option (transport/tcp/connect.go, synRcvdState), data included; once
// established it takes such segments again. The tap shows what the stack
// takes, so a client could send its first bytes without the option as a
// decoy (the stack drops them, an IDS rebuilds them as the stream's first
// bytes, where SNI and request-line rules match) and the real ones after
// them at the same sequence number with it. The flow keeps, as bits of
// Flow.tcp, whether the handshake wants timestamps and, for when it ends,
// the client's ISN+1 as the stack's SYN-ACK acknowledged it (Flow.tsAck).
//
//   - A client's SYN offering timestamps sets tcpTSWanted (and clears
//     tcpTSArmed): gVisor's endpoint may be in SYN-RECEIVED before its
//     SYN-ACK reaches the reply path.
//   - The stack's SYN-ACK says exactly what gVisor enabled: with the
//     option, tcpTSWanted and tcpTSArmed are set and tsAck is its
//     acknowledgment number; without, both are cleared.
//   - A client's segment with ACK and neither SYN nor RST (gVisor reads a
//     RST before the option, and a SYN-ACK's data is cut off in the feed
//     anyway) is dropped while tcpTSWanted holds and it has no timestamp
//     option. One with the option at tsAck, once armed, is in the window
//     and completes the handshake in gVisor (the forwarder checks no
//     acknowledgment number), so it clears both bits.
//
// A client that offers timestamps and then sends a segment without them
// before the handshake completed loses nothing gVisor would have taken. A
// SYN offering them on an established connection (which gVisor answers
// with a challenge ACK) makes the flow want them again until its next
// ACK at tsAck: only a client that offered timestamps and then dropped
// them loses segments by it. The check costs a flag test per segment; the
// options are read only while a handshake wants timestamps, and on SYNs.

// TCP option kinds (RFC 9293, RFC 7323, RFC 2018).
const (
	tcpOptEOL           = 0
	tcpOptNOP           = 1
	tcpOptMSS           = 2
	tcpOptWS            = 3
	tcpOptSACKPermitted = 4
	tcpOptSACK          = 5
	tcpOptTS            = 8
)

// tcpHasTS reports whether gVisor reads a timestamp option in the TCP
// header tcp (its data offset in bounds), as header.ParseSynOptions does
// for a segment with SYN set (syn) and header.ParseTCPOptions for any
// other: each stops at the first option it finds malformed, and they
// differ in which options they check.
//
// A first fragment cut inside its TCP header (RFC 791 allows 8 bytes of
// payload) shows too little: a SYN so cut is taken to offer timestamps
// (the stack's SYN-ACK then says whether it did), any other segment to
// carry none, so that a handshake's ACK the stack may drop for it is not
// shown. No real client cuts a TCP header in two.
func tcpHasTS(tcp []byte, syn bool) bool {
	end := int(tcp[12]>>4) * 4
	if end > len(tcp) {
		return syn
	}
	opts := tcp[20:end]
	for i := 0; i < len(opts); {
		kind := opts[i]
		switch {
		case kind == tcpOptEOL:
			return false
		case kind == tcpOptNOP:
			i++
			continue
		case i+2 > len(opts):
			return false
		}
		n := int(opts[i+1])
		switch {
		case kind == tcpOptTS:
			return i+10 <= len(opts) && n == 10
		case syn && kind == tcpOptMSS:
			if n != 4 || i+4 > len(opts) || opts[i+2] == 0 && opts[i+3] == 0 {
				return false
			}
		case syn && kind == tcpOptWS:
			if n != 3 || i+3 > len(opts) {
				return false
			}
		case syn && kind == tcpOptSACKPermitted:
			if n != 2 {
				return false
			}
		case !syn && kind == tcpOptSACK:
			if i+n > len(opts) || (n-2)%8 != 0 {
				return false
			}
		default:
			if n < 2 || i+n > len(opts) {
				return false
			}
		}
		i += n
	}
	return false
}

// tsClientSyn records a client's bare SYN, as ParsePacket read it into p
// from pkt: one offering timestamps makes the handshake want them.
func (f *Flow) tsClientSyn(p *Packet, pkt []byte) {
	if tcpHasTS(pkt[p.Payload:], true) {
		f.tcpUpdate(func(was uint32, _ uint8) uint32 { return was&^tcpTSArmed | tcpTSWanted }, 0)
	}
}

// tsStackSynAck records the stack's SYN-ACK, as ParsePacket read it into
// p from pkt: whether it carries timestamps is whether gVisor enabled
// them, and its acknowledgment number is where the handshake's last ACK
// is.
func (f *Flow) tsStackSynAck(p *Packet, pkt []byte) {
	if !tcpHasTS(pkt[p.Payload:], true) {
		f.tcpUpdate(func(was uint32, _ uint8) uint32 { return was &^ (tcpTSWanted | tcpTSArmed) }, 0)
		return
	}
	f.tsAck.Store(p.ack)
	f.tcpUpdate(func(was uint32, _ uint8) uint32 { return was | tcpTSWanted | tcpTSArmed }, 0)
}

// tsRefuses reports whether gVisor would drop the client's segment p (read
// from pkt, with ACK and neither SYN nor RST) for want of a timestamp
// option during a handshake that wants one; one with the option that
// completes the handshake ends the wait.
func (f *Flow) tsRefuses(p *Packet, pkt []byte) bool {
	st := f.tcp.Load()
	if st&tcpTSWanted == 0 {
		return false
	}
	if !tcpHasTS(pkt[p.Payload:], false) {
		return true
	}
	if st&tcpTSArmed != 0 && p.seq == f.tsAck.Load() {
		f.tcpUpdate(func(was uint32, _ uint8) uint32 { return was &^ (tcpTSWanted | tcpTSArmed) }, 0)
	}
	return false
}
