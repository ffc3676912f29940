package netstack_test

import (
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// vanishAfter is a client that sends upload, then its FIN when fin, and
// then vanishes (its packets dropped) while the appliance reads nothing:
// it returns the appliance's conn once the stack has given up on the
// client, with the upload (and the FIN) still unread in it.
func vanishAfter(t *testing.T, upload string, fin bool) *netstack.Conn {
	t.Helper()
	r := newConnRigTCP(t, netstack.TCPOptions{
		KeepaliveIdle: 300 * time.Millisecond, KeepaliveInterval: 200 * time.Millisecond, KeepaliveCount: 2,
	})
	cc, cep, c := r.dialEndpoint()
	if _, err := cc.Write([]byte(upload)); err != nil {
		t.Fatal(err)
	}
	if fin {
		if terr := cep.Shutdown(tcpip.ShutdownWrite); terr != nil {
			t.Fatal(terr)
		}
	}
	// Everything the client sent acknowledged: it is in the stack.
	for end := time.Now().Add(waitFor); ; time.Sleep(time.Millisecond) {
		st := tcp.EndpointState(cep.State())
		if fin && st == tcp.StateFinWait2 || !fin && c.Readable() {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("what the client sent was not all taken in (client state %v)", st)
		}
	}
	r.client.SetTap(func([]byte) bool { return true }) // the client is gone
	for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the stack did not give up on the vanished client")
		}
	}
	return c
}

// TestReadsSayEOFWhenFINCameBeforeBreak: a client sends its upload and
// its FIN, and then vanishes while both are still unread in the stack.
// The reads give the upload and then the end of the stream, as a Linux
// socket's do (tcp_recvmsg says 0 once the FIN is in, before it looks at
// the error): a relay that read the break instead reset the destination
// and passed no FIN on, cutting an upload the stack had acknowledged to
// the client whole. The break is left for BrokenError (the relay's
// watch after the FIN).
func TestReadsSayEOFWhenFINCameBeforeBreak(t *testing.T) {
	for _, tr := range []bool{true, false} {
		name := map[bool]string{true: "TryRead", false: "Read"}[tr]
		t.Run(name, func(t *testing.T) {
			c := vanishAfter(t, "upload", true)
			read := c.Read
			if tr {
				read = c.TryRead
			}
			buf := make([]byte, 64)
			n, err := read(buf)
			if err != nil || string(buf[:n]) != "upload" {
				t.Fatalf("the first read: %q, %v; want the upload", buf[:n], err)
			}
			for i := range 2 {
				if n, err := read(buf); n != 0 || err != io.EOF {
					t.Errorf("read %d after the upload: %d, %v; want io.EOF: the FIN came before the break", i+1, n, err)
				}
			}
			if why := c.BrokenError(); !errors.Is(why, syscall.ETIMEDOUT) {
				t.Errorf("BrokenError: %v; want the client's vanishing (ETIMEDOUT)", why)
			}
		})
	}
}

// TestReadsSayBreakWithoutFIN: a client that vanishes with no FIN sent
// cut its upload short: the reads give what came and then the break,
// never the end of the stream, so that no relay passes a FIN on for it.
func TestReadsSayBreakWithoutFIN(t *testing.T) {
	for _, tr := range []bool{true, false} {
		name := map[bool]string{true: "TryRead", false: "Read"}[tr]
		t.Run(name, func(t *testing.T) {
			c := vanishAfter(t, "upl", false)
			read := c.Read
			if tr {
				read = c.TryRead
			}
			buf := make([]byte, 64)
			if n, err := read(buf); err != nil || string(buf[:n]) != "upl" {
				t.Fatalf("the first read: %q, %v; want what the client sent", buf[:n], err)
			}
			for i := range 2 {
				if _, err := read(buf); err == nil || errors.Is(err, io.EOF) {
					t.Errorf("read %d after the bytes: %v; want the client's vanishing, not the end of the stream", i+1, err)
				}
			}
		})
	}
}

// TestBrokenAfterFINTellsAVanishingAfterFIN: a client that vanishes after
// its FIN broke its connection after the FIN, as one that resets then
// does: the client watch takes a WebSocket tunnel whose client ended its
// side for over, and so leaves the destination to get the whole upload.
// It took the vanishing for a cut tunnel, and the session's Abort reset
// the destination, throwing away the tail the host socket still held. A
// client that vanishes without a FIN broke it before.
func TestBrokenAfterFINTellsAVanishingAfterFIN(t *testing.T) {
	for _, fin := range []bool{true, false} {
		c := vanishAfter(t, "upload", fin)
		if got := c.BrokenAfterFIN(); got != fin {
			t.Errorf("FIN %v: BrokenAfterFIN %v once the client vanished", fin, got)
		}
	}
}
