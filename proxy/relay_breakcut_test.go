package proxy

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestDestResetAfterBreakWhileWritingSaysBreak: a client uploads 3 MiB to
// a destination that reads nothing, its FIN is acknowledged, and it resets
// while the relay's write waits; the destination then resets. The break
// was seen while the write waited (a linger from then on), and the
// record said only the write's error, bytes_out counting the MBs the
// destination never had. As for the same break seen at the copy's end:
// `the client's connection broke after its FIN: …` and `the destination
// reset its connection with N bytes of the upload unacknowledged`,
// bytes_out net of what was never sent.
func TestDestResetAfterBreakWhileWritingSaysBreak(t *testing.T) {
	rec := breakWhileWritingRecord(t, false)
	if rec.Result != "reset" || !strings.Contains(rec.Error, "the client's connection broke after its FIN") ||
		!strings.Contains(rec.Error, "the destination reset its connection with") {
		t.Errorf("record %s %q, want reset, the client's break after its FIN and the destination's reset", rec.Result, rec.Error)
	}
	if rec.BytesOut > heldBytesMax {
		t.Errorf("bytes_out %d: more than the destination, which read nothing, can have had (%d)", rec.BytesOut, heldBytesMax)
	}
}

// TestStallAfterBreakWhileWritingSaysTailCut: the same, the destination
// neither reading nor resetting: the write-stall timeout ends the linger
// begun at the break, and the record says the tail was not delivered,
// bytes_out counting only what the destination acknowledged. Its result
// is the break's (reset), as the same client's linger at the copy's end
// (TestStallAfterBreakResultMatchesLinger) and a tunnel's say: it was
// `stalled`.
func TestStallAfterBreakWhileWritingSaysTailCut(t *testing.T) {
	rec := breakWhileWritingRecord(t, true)
	if rec.Result != "reset" || !strings.Contains(rec.Error, "the client's connection broke after its FIN") ||
		!strings.Contains(rec.Error, "the upload's tail was not delivered: write stalled") {
		t.Errorf("record %s %q, want reset, the client's break after its FIN and the tail not delivered", rec.Result, rec.Error)
	}
	if rec.BytesOut > heldBytesMax {
		t.Errorf("bytes_out %d: more than the destination, which read nothing, can have had (%d)", rec.BytesOut, heldBytesMax)
	}
}

// TestStallAfterBreakResultMatchesLinger: a client resets after its FIN,
// the destination reading nothing, the write-stall timeout 2 s. Whether
// the relay's write of the upload was done at the break (a linger at the
// copy's end) or still waiting, the same client and destination get the
// same result: it was `reset` for the one and `stalled` for the other.
func TestStallAfterBreakResultMatchesLinger(t *testing.T) {
	r := lingerOnDeafDest(t, 2*time.Second, 256<<10)
	lingerRec, ok := r.record(t, 10*time.Second)
	if !ok {
		t.Fatal("no record of the linger")
	}
	blockedRec := breakWhileWritingRecord(t, true)
	if lingerRec.Result != "reset" || blockedRec.Result != lingerRec.Result {
		t.Errorf("results %s (write done at the break) and %s (write waiting at the break), want reset for both", lingerRec.Result, blockedRec.Result)
	}
}

// heldBytesMax is more than a destination that reads nothing, its receive
// buffer made small (smallBufferListener), acknowledges; far less than the
// MBs the appliance's send buffer takes.
const heldBytesMax = 256 << 10

// breakWhileWritingRecord runs the flow, the destination resetting or the
// write stalling (a 2 s timeout), and returns its record.
func breakWhileWritingRecord(t *testing.T, stall bool) records.Record {
	t.Helper()
	r := newShareRig(t, 8, 300*time.Millisecond, Config{})
	if stall {
		r.p.SetWriteStallTimeout(2 * time.Second)
	}
	ln := smallBufferListener(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	c := r.dialWithinShare(t, ln.Addr().(*net.TCPAddr).AddrPort(), 10*time.Second)
	if _, err := c.Write(make([]byte, 3<<20)); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	waitFINAcked(t, c)
	waitRelayWriteWaiting(t, r.p)
	c.reset()
	time.Sleep(300 * time.Millisecond) // the relay's watch sees the break: nothing outside it tells when
	if n := len(r.sink.parse(t)); n != 0 {
		t.Fatalf("%d records before the destination's end", n)
	}
	d := <-accepted
	defer d.Close()
	if !stall {
		_ = d.(*net.TCPConn).SetLinger(0)
		d.Close()
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if recs := r.sink.parse(t); len(recs) > 0 {
			return recs[0]
		}
	}
	t.Fatal("no record")
	return records.Record{}
}
