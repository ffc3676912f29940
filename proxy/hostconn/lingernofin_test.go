package hostconn_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"golang.org/x/sys/unix"
)

// sendCounts is ours's send queue: SIOCOUTQ (unacknowledged, the FIN's
// sequence number too) and SIOCOUTQNSD (never sent).
func sendCounts(t *testing.T, ours *net.TCPConn) (outq, notSent int) {
	t.Helper()
	rc, err := ours.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var e1, e2 error
	if err := rc.Control(func(fd uintptr) {
		outq, e1 = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		notSent, e2 = unix.IoctlGetInt(int(fd), 0x894B)
	}); err != nil {
		t.Fatal(err)
	}
	if e1 != nil || e2 != nil {
		t.Fatal(e1, e2)
	}
	return outq, notSent
}

// resetByPeer has peer reset the connection (a zero linger) and waits
// until ours has taken the reset (TCP_CLOSE).
func resetByPeer(t *testing.T, ours, peer *net.TCPConn) {
	t.Helper()
	_ = peer.SetLinger(0)
	peer.Close()
	rc, err := ours.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		var state uint8
		rc.Control(func(fd uintptr) {
			if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = ti.State
			}
		})
		if state == 7 { // TCP_CLOSE
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the peer's reset did not come within 5 s")
		}
	}
}

// TestLingerCountsNoFINAfterPeerReset: the peer resets before any FIN
// was queued (the caller's shutdown and Linger's both find the
// connection ended: ENOTCONN), so the send queue's counts are all data:
// Linger says every byte of it undelivered. It took a FIN off that was
// never queued, and one data byte the peer never had, alone in the
// queue, it said delivered (0, nil): the relay closed the destination
// and its record said nothing of the cut (review rev33e F2). A FIN the
// caller's shutdown queued before the reset is still taken off.
func TestLingerCountsNoFINAfterPeerReset(t *testing.T) {
	cases := []struct {
		name string
		// fill puts the data in ours's send queue that the peer will
		// not have acknowledged at its reset.
		fill      func(t *testing.T, ours, peer *net.TCPConn)
		finBefore bool // the caller's shutdown queued the FIN before the reset
	}{
		{"one byte never sent", corkedByte, false},
		{"a tail unsent", fillUnread, false},
		{"a tail unsent, the FIN queued before the reset", fillUnread, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ours, peer := lingerPair(t)
			c.fill(t, ours, peer)
			if c.finBefore {
				if err := ours.CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			resetByPeer(t, ours, peer)
			outq, notSent := sendCounts(t, ours)
			fin := 0
			if c.finBefore {
				fin = 1
			}
			wantUnsent, wantNotSent := outq-fin, notSent-fin
			if wantUnsent < 1 {
				t.Fatalf("after the reset: %d bytes unacknowledged, the FIN %d of them; the test wants data", outq, fin)
			}
			rc, err := ours.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			unsent, err := hostconn.Linger(rc, c.finBefore, make([]byte, 4096), fixed(time.Second), nil)
			t.Logf("after the reset: outq %d, not sent %d; Linger: %d unsent, %v", outq, notSent, unsent, err)
			ended, ok := errors.AsType[*hostconn.EndedError](err)
			if !ok || !ended.ByPeer() {
				t.Fatalf("Linger: %d unsent, %v; want the peer's reset, %d data bytes unacknowledged", unsent, err, wantUnsent)
			}
			if unsent != wantUnsent || ended.NotSent != wantNotSent {
				t.Errorf("Linger: %d unsent, %d never sent; want %d and %d (outq %d, not sent %d, the FIN %d of each)", unsent, ended.NotSent, wantUnsent, wantNotSent, outq, notSent, fin)
			}
		})
	}
}

// corkedByte leaves one data byte in ours's send queue, never sent: the
// socket is corked (as a closed window holds a byte back), the peer's
// reset coming well within the cork's 200 ms.
func corkedByte(t *testing.T, ours, _ *net.TCPConn) {
	t.Helper()
	rc, err := ours.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if _, err := ours.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	if outq, notSent := sendCounts(t, ours); outq != 1 || notSent != 1 {
		t.Fatalf("a corked byte: outq %d, not sent %d; want 1 and 1", outq, notSent)
	}
}
