package appliance

import (
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestStacksMadeThroughNewStacksAtFullProcs: the appliance hands
// Options.NewStacksAtFullProcs (main's GOMAXPROCS controller) to netstack,
// which makes the GWLB endpoint's stack through it, once, and the flow
// through that stack works. The flows' datagrams count in Carried, the work
// the controller judges its raises by: at least the GENEVE header and the
// inner IP and TCP headers of each, plus the 4 bytes each way.
func TestStacksMadeThroughNewStacksAtFullProcs(t *testing.T) {
	var calls atomic.Int32
	r := newRig(t, func(o *Options) {
		o.NewStacksAtFullProcs = func(newStack func()) {
			calls.Add(1)
			newStack()
		}
	}, nil)
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	before := r.app.Carried()
	for range 2 {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
			t.Fatalf("echo through the appliance: %q, %v", got, err)
		}
		c.Close()
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("NewStacksAtFullProcs called %d times for one endpoint's two flows, want 1", n)
	}
	// Each flow: at least a SYN in, a SYN-ACK out and the ping each way.
	if got, least := r.app.Carried()-before, uint64(2*4*(8+20+20)+2*2*4); got < least {
		t.Fatalf("Carried grew by %d bytes over two echoed flows, want at least %d", got, least)
	}
}
