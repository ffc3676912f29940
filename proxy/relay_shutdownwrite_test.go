package proxy

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestShutdownEndsRelayWriteAfterClientResetAfterFIN: a client uploads
// more than a destination that reads nothing takes, its FIN is
// acknowledged, and it resets while the relay's write waits: the relay's
// watch takes the break (a linger to come) and lets the copy go on. Then
// the stacks close. The client has no endpoint left for the close to
// abort, and the watch had acted already: the flow ran to the write-stall
// timeout (15 min), its record lost at shutdown. It must end within the
// drain's wait, bytes_out counting only what was sent the destination.
func TestShutdownEndsRelayWriteAfterClientResetAfterFIN(t *testing.T) {
	testShutdownEndsRelayWrite(t, true)
}

// TestShutdownEndsRelayWriteAfterClientFIN: the same flow with the client
// still there after its FIN (CLOSE-WAIT): the stacks' close ends it too.
func TestShutdownEndsRelayWriteAfterClientFIN(t *testing.T) {
	testShutdownEndsRelayWrite(t, false)
}

func testShutdownEndsRelayWrite(t *testing.T, reset bool) {
	r, srv := shutdownRig(t)
	p := r.p
	dst, drain := heldDest(t)
	before := hostSocketQueues(t, dst.Port())
	c := dialRaw(t, r.client, dst)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	uploadUntilRelayBlocked(t, p, c, dst.Port(), before)
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	waitFINAcked(t, c)
	waitRelayWriteWaiting(t, p)
	if reset {
		c.reset()
		// The relay's watch sees the break and lets the copy go on.
		waitEndpointState(t, c, tcp.StateError)
		time.Sleep(200 * time.Millisecond) // no event tells the watch has run: give it time
	}
	if p.Active() != 1 {
		t.Fatalf("active %d", p.Active())
	}
	rec, ok := shutdownRecord(t, r, srv)
	ends := drain()
	if !ok {
		return
	}
	t.Logf("record %s bytes_out %d; destination ends %v", rec.Result, rec.BytesOut, ends)
	if rec.Result != "reset" || !strings.Contains(rec.Error, "ended by the appliance's shutdown") {
		t.Errorf("record %s %q, want reset, ended by the appliance's shutdown", rec.Result, rec.Error)
	}
	if len(ends) != 1 || rec.BytesOut > ends[0].n+64<<10 {
		t.Errorf("bytes_out %d, destination ends %v: the reset threw away what it had not taken", rec.BytesOut, ends)
	}
	// What was in flight when the reset followed it the destination may
	// read (its acknowledgement held back): counted, as sent.
	if len(ends) == 1 && rec.BytesOut < ends[0].n {
		t.Errorf("bytes_out %d, less than the %d bytes the destination read", rec.BytesOut, ends[0].n)
	}
}

// TestShutdownEndsRelayWriteAfterCleanClose: an honest flow. The
// destination answers and ends its side at once, then reads nothing; the
// client uploads 3 MiB, sends its FIN, reads the answer to its end and
// closes, its close completing (the appliance's endpoint closed) while
// the relay's write of the upload waits. The stacks' close must end the
// flow within the drain's wait.
func TestShutdownEndsRelayWriteAfterCleanClose(t *testing.T) {
	r, srv := shutdownRig(t)
	p := r.p
	ln := smallBufferListener(t)
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("early"))
		_ = c.(*net.TCPConn).CloseWrite()
		held <- c
	}()
	defer func() {
		select {
		case d := <-held:
			d.Close()
		default:
		}
	}()
	c := dialRaw(t, r.client, ln.Addr().(*net.TCPAddr).AddrPort())
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(make([]byte, 3<<20)); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); string(b) != "early" {
		t.Fatalf("read %q %v", b, err)
	}
	c.Close()
	waitRelayWriteWaiting(t, p)
	time.Sleep(time.Second) // the client's close completes: no event to wait for
	if p.Active() != 1 {
		t.Fatalf("active %d", p.Active())
	}
	if rec, ok := shutdownRecord(t, r, srv); ok && !strings.Contains(rec.Error, "ended by the appliance's shutdown") {
		t.Errorf("record %s %q, want ended by the appliance's shutdown", rec.Result, rec.Error)
	}
}

// shutdownRecord closes r's stacks (the drain's end) and returns the
// record of its one flow, failing the test when it does not come within a
// drain's record wait.
func shutdownRecord(t *testing.T, r *stallRig, srv interface{ Close() error }) (rec records.Record, ok bool) {
	t.Helper()
	r.p.StacksClosing()
	srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	werr := r.p.Wait(ctx)
	rec, ok = r.record(t, 100*time.Millisecond)
	if werr != nil || !ok {
		t.Errorf("flow still open 3s after the stacks closed (write-stall timeout %v; record %v): its record would be lost at shutdown", r.p.WriteStallTimeout(), ok)
		return rec, false
	}
	return rec, true
}

// waitRelayWriteWaiting waits until a relay's write waits (the stall
// watch holds it).
func waitRelayWriteWaiting(t *testing.T, p *Proxy) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		p.stalls.mu.Lock()
		waiting := false
		for ww := range p.stalls.dirs {
			waiting = waiting || ww.waitSince.Load() > 0
		}
		p.stalls.mu.Unlock()
		if waiting {
			return
		}
		if time.Now().After(end) {
			t.Fatal("no relay write waits on the destination")
		}
	}
}

// waitEndpointState waits until c's endpoint is in state s.
func waitEndpointState(t *testing.T, c *rawClient, s tcp.EndpointState) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); tcp.EndpointState(c.ep.State()) != s; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("client endpoint %v, want %v", tcp.EndpointState(c.ep.State()), s)
		}
	}
}
