package netstack_test

import "testing"

// TestTapOmitsIPv4RecordRouteTimestampDecoys: record route and timestamp
// options gVisor refuses by their bytes alone (handleRecordRoute,
// handleTimestamp) keep their segments from the tap, counted; the real
// request behind them, with a full record route and a full timestamp
// whose overflow counter can count one more, which gVisor takes, is
// delivered and shown.
func TestTapOmitsIPv4RecordRouteTimestampDecoys(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	src, dst := connClient, connDest.Addr()
	seg := func(m string) []byte { return tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, []byte(m)) }
	r.sendEach(t,
		// RR, length 7, pointer 5: room, but not for an address at the pointer
		ipv4WithOptions(src, dst, 301, seg("GET /d-rr/"), []byte{7, 7, 5, 0, 0, 0, 0, 1}),
		// TS, flags 0, length 8, pointer 6: no whole entry at the pointer
		ipv4WithOptions(src, dst, 302, seg("GET /d-tsptr/"), []byte{68, 8, 6, 0, 0, 0, 0, 0}),
		// TS full (pointer 9 > length 8), overflow 15
		ipv4WithOptions(src, dst, 303, seg("GET /d-tsovf/"), []byte{68, 8, 9, 0xf0, 0, 0, 0, 0}),
		// RR full (pointer 8 > length 7), NOP, TS full with overflow 14
		ipv4WithOptions(src, dst, 304, seg(string(evilRequest)),
			[]byte{7, 7, 8, 0, 0, 0, 0, 1, 68, 8, 9, 0xe0, 0, 0, 0, 0}))
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-rr/", "/d-tsptr/", "/d-tsovf/")
	wantInFeed(t, tap, []byte("/evil/"), "the request the stack delivered")
	wantInnerRefused(t, r, 3)
}

// TestTapOmitsLaterFragmentRefusedOptions: a later fragment whose IPv4
// options gVisor refuses (a Router Alert of value 1) is dropped before the
// tap and counted, as gVisor verifies every fragment's options before
// reassembly; the real later fragment at the same offset makes the
// datagram the stack delivers.
func TestTapOmitsLaterFragmentRefusedOptions(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	benign := []byte("GET /fine/readme.txt HTTP/1.1\r\nHost: x\r\n\r\n")
	evilSeg := tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, evilRequest)
	benignSeg := tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, benign)
	const cut = 24
	r.sendEach(t,
		ipv4Packet(connClient, connDest.Addr(), 0x4343, evilSeg, 0, cut, true),
		ipv4FragWithOptions(connClient, connDest.Addr(), 0x4343, benignSeg, cut, len(benignSeg), false, []byte{148, 4, 0, 1}),
		ipv4Packet(connClient, connDest.Addr(), 0x4343, evilSeg, cut, len(evilSeg), false))
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/fine/")
	wantInnerRefused(t, r, 1)
}

// TestTapShowsRstWithoutItsData: a RST carrying data inside the window but
// not at the next sequence number gets a challenge ACK (RFC 5961) and its
// data is never delivered; the tap is shown the RST cut to its headers,
// with lengths and checksums that hold, and the real request at the same
// sequence number is delivered.
func TestTapShowsRstWithoutItsData(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	rst := tcpSegment(client, connDest, cliSeq+1, srvSeq, 0x14, []byte("GET /d-rst/ HTTP/1.1\r\n\r\n"))
	data := tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, evilRequest)
	r.sendEach(t, ipv4Packet(connClient, connDest.Addr(), 401, rst, 0, len(rst), false),
		ipv4Packet(connClient, connDest.Addr(), 402, data, 0, len(data), false))
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-rst/")
	wantShownCut(t, tap, 0x04, "RST")
}
