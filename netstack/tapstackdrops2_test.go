package netstack_test

import (
	"bytes"
	"testing"
)

// TestTapOmitsIPv4RecordRouteTimestampDecoys: record route and timestamp
// options gVisor refuses by their bytes alone (handleRecordRoute,
// handleTimestamp) keep their segments from the tap, counted; the real
// request behind them, with a full record route and a full timestamp
// whose overflow counter can count one more, which gVisor takes, is
// delivered and shown.
func TestTapOmitsIPv4RecordRouteTimestampDecoys(t *testing.T) {
	tap := &seenTap{}
	r := newTapRig(t, tap)
	sc, n, rep := r.established()
	srvSeq, cliSeq, client := replySeqs(rep)
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
	if got, err := readAll(t, sc, n, len(evilRequest)); !bytes.Equal(got, evilRequest) {
		t.Fatalf("the stack delivered %q (%v), want %q", got, err, evilRequest)
	}
	wantNoneInFeed(t, tap, "/d-rr/", "/d-tsptr/", "/d-tsovf/")
	shown := false
	for _, p := range tap.inbound() {
		shown = shown || bytes.Contains(p.pkt, []byte("/evil/"))
	}
	if !shown {
		t.Error("the tap was not shown the request the stack delivered")
	}
	if got := r.srv.Stats().Drops["inner_refused"]; got != 3 {
		t.Errorf("inner_refused %d, want 3", got)
	}
}
