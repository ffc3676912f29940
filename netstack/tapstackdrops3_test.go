package netstack_test

// Cases a mutation review found no test held: each fails with its check
// broken (a stack drop shown to the tap, a parse check, a forbidden spelling).

import (
	"testing"
)

// a timestamp option whose pointer is 4, before
// the first slot (handleTimestamp's parameter problem), is refused by
// gVisor; the tap must not be shown its segment.
func TestTapOmitsTimestampPointerBeforeFirstSlot(t *testing.T) {
	tap, r := newSeenTapRig(t)
	sc, n, srvSeq, cliSeq, client := r.establishedSeqs()
	src, dst := connClient, connDest.Addr()
	seg := func(m string) []byte { return tcpSegment(client, connDest, cliSeq, srvSeq, 0x18, []byte(m)) }
	r.sendEach(t,
		// TS, flags 0, length 8, pointer 4: before the first slot
		ipv4WithOptions(src, dst, 311, seg("GET /d-tsp4/"), []byte{68, 8, 4, 0, 0, 0, 0, 0}),
		ipv4WithOptions(src, dst, 312, seg(string(evilRequest)), []byte{1, 1, 1, 1}))
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-tsp4/")
	wantInnerRefused(t, r, 1)
}

// a hop-by-hop header with two Router Alert
// options is refused by gVisor; the tap must not be shown its segment.
func TestTapOmitsTwoRouterAlerts(t *testing.T) {
	tap, r, sc, n, seg := ipv6DecoyRig(t)
	r.sendEach(t,
		ipv6With(client6, dest6.Addr(), 0, []byte{6, 1, 5, 2, 0, 0, 5, 2, 0, 0, 1, 4, 0, 0, 0, 0}, seg("GET /d-ra2/")),
		ipv6With(client6, dest6.Addr(), 0, []byte{6, 1, 5, 2, 0, 0, 1, 0, 1, 4, 0, 0, 0, 0, 1, 0}, seg(string(evilRequest))))
	wantDelivered(t, sc, n, evilRequest)
	wantNoneInFeed(t, tap, "/d-ra2/")
	wantInnerRefused(t, r, 1)
}
