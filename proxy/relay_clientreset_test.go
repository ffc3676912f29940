package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// TestRelayClientResetMidDownloadNotAfterFIN: a relayed (not intercepted)
// download whose client, never having sent a FIN, resets while the relay's
// write to it waits for room. Once that Write took the stack's one report
// of the reset, reads said "end of stream", and the record said "the
// client's connection broke after its FIN" (7 of 20 flows).
func TestRelayClientResetMidDownloadNotAfterFIN(t *testing.T) {
	const runs = 10
	afterFIN := 0
	for i := range runs {
		r := newRelayRig(t)
		ep, conn := r.dialEndpoint(t, uint16(2000+i))
		upSide, server := loopbackPair(t)
		done := make(chan error, 1)
		startRelay(&peekedConn{Conn: conn}, upSide, func(_, _ int64, err error) { done <- err })
		stop := make(chan struct{})
		go func() {
			buf := make([]byte, 64<<10)
			for range 1024 { // at most 64 MiB
				select {
				case <-stop:
					return
				default:
				}
				server.SetWriteDeadline(time.Now().Add(2 * time.Second))
				if _, err := server.Write(buf); err != nil {
					return
				}
			}
		}()
		time.Sleep(300 * time.Millisecond) // the client reads nothing: the relay's write waits for room
		ep.Abort()                         // RST, no FIN ever sent
		select {
		case err := <-done:
			if err != nil && strings.Contains(err.Error(), "after its FIN") {
				afterFIN++
				t.Logf("run %d: %v", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the relay did not end")
		}
		close(stop)
	}
	if afterFIN > 0 {
		t.Errorf("%d of %d relayed flows whose client reset mid-download, never having sent a FIN, recorded \"the client's connection broke after its FIN\"", afterFIN, runs)
	}
}

// TestRelayClientResetMidUploadNotPassedAsFIN: a relayed flow whose client
// uploads, never sending a FIN, and then resets, while the destination
// sends to it faster than it reads (so the relay's write may take the
// reset) or not at all. The destination must see the reset, not a clean
// FIN that makes a cut upload look whole.
func TestRelayClientResetMidUploadNotPassedAsFIN(t *testing.T) {
	for _, destSends := range []bool{true, false} {
		t.Run(map[bool]string{true: "destination sending", false: "destination silent"}[destSends], func(t *testing.T) { relayResetMidUpload(t, destSends) })
	}
}

func relayResetMidUpload(t *testing.T, destSends bool) {
	runs := 10
	if destSends {
		runs = 30
	}
	fins := 0
	for i := range runs {
		r := newRelayRig(t)
		ep, conn := r.dialEndpoint(t, uint16(3000+i))
		upSide, server := loopbackPair(t)
		done := make(chan error, 1)
		startRelay(&peekedConn{Conn: conn}, upSide, func(_, _ int64, err error) { done <- err })
		stop := make(chan struct{})
		full := make(chan struct{})
		if !destSends {
			close(full)
		}
		go func() { // the destination sends; the client never reads
			if !destSends {
				return
			}
			buf := make([]byte, 64<<10)
			for range 1024 {
				select {
				case <-stop:
					return
				default:
				}
				// Until the path is full (a write that times out), then
				// stop: a send of the destination's own must not take the
				// reset its socket gets (Linux reports it once), or its read
				// says EOF whatever came.
				server.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := server.Write(buf); err != nil {
					close(full)
					return
				}
			}
		}()
		readEnd := make(chan error, 1)
		go func() { // the destination reads the upload
			server.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.Copy(io.Discard, server)
			if err == nil {
				err = io.EOF
			}
			readEnd <- err
		}()
		select {
		case <-full:
		case <-time.After(5 * time.Second):
			t.Fatal("the path never filled")
		}
		up := make([]byte, 8<<10)
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) { // the client uploads
			var rd bytes.Reader
			rd.Reset(up)
			if _, terr := ep.Write(&rd, tcpip.WriteOptions{}); terr != nil {
				time.Sleep(time.Millisecond)
			}
		}
		ep.Abort() // RST, no FIN
		select {
		case rerr := <-done:
			_ = rerr
		case <-time.After(5 * time.Second):
			t.Fatal("the relay did not end")
		}
		err := <-readEnd
		if errors.Is(err, io.EOF) {
			fins++
		}
		close(stop)
	}
	if fins > 0 {
		t.Errorf("%d of %d destinations saw a clean end of an upload the client reset (a FIN passed on)", fins, runs)
	}
}
