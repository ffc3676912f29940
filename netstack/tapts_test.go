package netstack_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// tcpSegmentOpts is tcpSegment with the TCP options opts (a multiple of 4
// bytes long).
func tcpSegmentOpts(src, dst netip.AddrPort, seq, ack uint32, flags byte, opts, payload []byte) []byte {
	tcp := make([]byte, 20+len(opts)+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = byte((20+len(opts))/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], opts)
	copy(tcp[20+len(opts):], payload)
	binary.BigEndian.PutUint16(tcp[16:], tcpSum(src.Addr(), dst.Addr(), tcp))
	return tcp
}

// tsOption is NOP, NOP and a timestamp option with val and ecr.
func tsOption(val, ecr uint32) []byte {
	o := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(o[4:], val)
	binary.BigEndian.PutUint32(o[8:], ecr)
	return o
}

// synAckOf opens a connection from cli with a SYN carrying synOpts and
// payload and returns the stack's SYN-ACK (its IPv4 packet).
func (r *tapRig) synAckOf(t *testing.T, cli netip.AddrPort, isn uint32, synOpts, payload []byte) []byte {
	t.Helper()
	var mu sync.Mutex
	var synack []byte
	r.client.SetTap(func(inner []byte) bool {
		if inner[9] == 6 && inner[33] == 0x12 {
			mu.Lock()
			synack = append([]byte(nil), inner...)
			mu.Unlock()
		}
		return true
	})
	syn := tcpSegmentOpts(cli, connDest, isn, 0, 0x02, synOpts, payload)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 1, syn, 0, len(syn), false))
	for deadline := time.Now().Add(waitFor); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		sa := synack
		mu.Unlock()
		if sa != nil {
			return sa
		}
	}
	t.Fatal("no SYN-ACK")
	return nil
}

// synAckWithTimestamps opens a connection from cli with a SYN offering
// an MSS and timestamps (TSval 100) and returns the stack's ISN and TSval
// from its SYN-ACK; it fails the test if the SYN-ACK has no timestamp.
func (r *tapRig) synAckWithTimestamps(t *testing.T, cli netip.AddrPort, isn uint32) (srvISN, tsval uint32) {
	t.Helper()
	sa := r.synAckOf(t, cli, isn, append([]byte{2, 4, 0x05, 0xb4}, tsOption(100, 0)...), nil)
	srvISN, tsval = binary.BigEndian.Uint32(sa[24:]), tsValOf(sa)
	if tsval == 0 {
		t.Fatal("the SYN-ACK has no timestamp: not negotiated")
	}
	return srvISN, tsval
}

// tsValOf is the TSval of the TCP segment in the IPv4 packet pkt (0: none).
func tsValOf(pkt []byte) uint32 {
	tcp := pkt[20:]
	opts := tcp[20 : int(tcp[12]>>4)*4]
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0:
			return 0
		case 1:
			i++
			continue
		case 8:
			return binary.BigEndian.Uint32(opts[i+2:])
		}
		i += int(opts[i+1])
	}
	return 0
}

// TestTapOmitsHandshakeAckWithoutTimestamps: after a SYN offering
// timestamps, gVisor drops the handshake's ACK if it carries none (RFC
// 7323 3.2), data included. A client sending its first bytes so, as a
// decoy, then the real ones at the same sequence number with the option,
// must not have the tap show the decoy; it is counted as inner_refused.
// Once the handshake completed, a segment without timestamps, which
// gVisor takes, is shown and delivered.
func TestTapOmitsHandshakeAckWithoutTimestamps(t *testing.T) {
	tap, r := newSeenTapRig(t)
	cli := netip.AddrPortFrom(connClient, 41001)
	isn, tsval := r.synAckWithTimestamps(t, cli, 5000)
	decoy := tcpSegment(cli, connDest, 5001, isn+1, 0x18, []byte("GET /d-nots/ HTTP/1.1\r\nHost: x\r\n\r\n"))
	real := tcpSegmentOpts(cli, connDest, 5001, isn+1, 0x18, tsOption(101, tsval), evilRequest)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 2, decoy, 0, len(decoy), false),
		ipv4Packet(connClient, connDest.Addr(), 3, real, 0, len(real), false))
	sc, n := r.acceptedReading()
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-nots/")
	wantInnerRefused(t, r, 1)
	// Established: gVisor takes a segment without timestamps, and so
	// does the tap.
	more := []byte("more bytes")
	late := tcpSegment(cli, connDest, 5001+uint32(len(evilRequest)), isn+1, 0x18, more)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 4, late, 0, len(late), false))
	if got, err := readAll(t, sc, n, len(more)); !bytes.Equal(got, more) {
		t.Fatalf("after the handshake the stack delivered %q (%v), want %q", got, err, more)
	}
	wantInFeed(t, tap, more, "the segment without timestamps the stack took after the handshake")
}

// TestTapShowsHandshakeAckWithoutTimestampsNotOffered: a SYN that offers
// no timestamps makes none wanted: the handshake's ACK without them is
// taken, delivered and shown.
func TestTapShowsHandshakeAckWithoutTimestampsNotOffered(t *testing.T) {
	_, r := newSeenTapRig(t)
	cli := netip.AddrPortFrom(connClient, 41002)
	sa := r.synAckOf(t, cli, 7000, []byte{2, 4, 0x05, 0xb4}, nil)
	if tsValOf(sa) != 0 {
		t.Fatal("the SYN-ACK has a timestamp the SYN did not offer")
	}
	isn := binary.BigEndian.Uint32(sa[24:])
	data := tcpSegment(cli, connDest, 7001, isn+1, 0x18, evilRequest)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 2, data, 0, len(data), false))
	sc, n := r.acceptedReading()
	wantDelivered(t, sc, n, evilRequest)
	wantInnerRefused(t, r, 0)
}

// TestTapOmitsHandshakeAckWithoutTimestampsAfterTricks: neither a second
// SYN without timestamps (gVisor keeps what the first enabled) nor an ACK
// with them outside the window (gVisor answers it and stays in
// SYN-RECEIVED) ends the wait for them: the decoy after both is still
// kept from the tap.
func TestTapOmitsHandshakeAckWithoutTimestampsAfterTricks(t *testing.T) {
	tap, r := newSeenTapRig(t)
	cli := netip.AddrPortFrom(connClient, 41003)
	isn, tsval := r.synAckWithTimestamps(t, cli, 9000)
	resyn := tcpSegmentOpts(cli, connDest, 9000, 0, 0x02, []byte{2, 4, 0x05, 0xb4}, nil)
	outside := tcpSegmentOpts(cli, connDest, 9001-5000, isn+1, 0x10, tsOption(101, tsval), nil)
	decoy := tcpSegment(cli, connDest, 9001, isn+1, 0x18, []byte("GET /d-nots/ HTTP/1.1\r\nHost: x\r\n\r\n"))
	real := tcpSegmentOpts(cli, connDest, 9001, isn+1, 0x18, tsOption(102, tsval), evilRequest)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 2, resyn, 0, len(resyn), false),
		ipv4Packet(connClient, connDest.Addr(), 3, outside, 0, len(outside), false),
		ipv4Packet(connClient, connDest.Addr(), 4, decoy, 0, len(decoy), false),
		ipv4Packet(connClient, connDest.Addr(), 5, real, 0, len(real), false))
	sc, n := r.acceptedReading()
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-nots/")
}
