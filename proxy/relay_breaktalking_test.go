package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A client uploads more than a slow destination takes, sends its FIN, all
// acknowledged by the appliance, reads nothing of what the destination
// sends (the relay's write to the client waits), and resets: the common
// close with an answer unread. The upload was whole: the destination gets
// every byte and the FIN, and the record says the break after the FIN
// (records.md). The stack reports such a reset once; b07caba had the
// relay's end ask for it too, and whichever asker came first took it
// from the others: the destination was reset (4 KiB of 2.8 MB) or closed
// with its own bytes unread, its kernel then resetting it (14 of 15 runs;
// found by review r4s27 F1). The record left the break out when the relay
// ended before the watch of the client took it (r4s27 F2).
func TestRelayBreakAfterFINToTalkingDestinationDeliversUpload(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fixed int64
	}{{"upload blocked", 0}, {"upload written", 1 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			rec := breakAfterFINToTalkingDest(t, tc.fixed)
			if !strings.Contains(rec.Error, "the client's connection broke after its FIN") {
				t.Errorf("record %s %q; want the break after the FIN said", rec.Result, rec.Error)
			}
		})
	}
}

// breakAfterFINToTalkingDest runs that flow, with an upload of fixed
// bytes (0: until the relay's write is blocked), and returns its record
// once it has checked the destination got the whole upload.
func breakAfterFINToTalkingDest(t *testing.T, fixed int64) records.Record {
	t.Helper()
	r := newStallRig(t, time.Minute)
	ln := smallBufferListener(t)
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	readNow, ends := make(chan struct{}), make(chan destEnd, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
			return
		}
		go func() { // it talks: until its writes fail, bounded
			chunk := make([]byte, 64<<10)
			for range 512 {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
		<-readNow
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := io.Copy(io.Discard, c)
		ends <- destEnd{n + int64(len(hello)), err}
	}()
	before := hostSocketQueues(t, dst.Port())
	c := dialRaw(t, r.client, dst)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	var sent int64
	if fixed > 0 {
		if _, err := c.Write(make([]byte, fixed)); err != nil {
			t.Fatal(err)
		}
		sent = fixed
	} else {
		sent = uploadUntilRelayBlocked(t, r.p, c, dst.Port(), before)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	waitFINAcked(t, c)
	time.Sleep(300 * time.Millisecond) // the relay's write to the client waits for room
	c.reset()
	time.Sleep(500 * time.Millisecond)
	close(readNow)
	var got destEnd
	select {
	case got = <-ends:
	case <-time.After(30 * time.Second):
		t.Fatal("the destination's read did not end")
	}
	rec, ok := r.record(t, 10*time.Second)
	if !ok {
		t.Fatal("no record")
	}
	size := int64(len(hello)) + sent
	t.Logf("destination got %d of %d bytes, ended by %v; record: result %s, bytes_out %d, unacked %d, error %q",
		got.n, size, got.err, rec.Result, rec.BytesOut, rec.BytesOutUnacked, rec.Error)
	wantWholeUploadDelivered(t, got, size, rec.BytesOut)
	return rec
}
