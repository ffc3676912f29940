package proxy

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestShutdownEndsFlowWhoseClientSentFIN: the drain's end (the stacks
// closing) with a relayed flow whose client sent its upload and FIN and
// whose destination reads nothing: the stacks' closing is the
// appliance's own end of the flow, not the client's break, and the flow
// ends, its record written within the drain's record wait. It was taken
// for a client's break after its FIN, and the destination lingered for
// the write-stall bound (15 min): the drain gave up and the record was
// lost.
func TestShutdownEndsFlowWhoseClientSentFIN(t *testing.T) {
	const size = 256 << 10
	r, srv := shutdownRig(t)
	p, client := r.p, r.client
	release := make(chan struct{})
	defer close(release)
	dst, _ := slowReadDest(t, release)
	c := dialRaw(t, client, dst)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	payload := make([]byte, size)
	copy(payload, hello)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1 * time.Second)
	if p.Active() != 1 {
		t.Fatalf("active %d", p.Active())
	}
	p.StacksClosing()
	srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	t0 := time.Now()
	werr := p.Wait(ctx)
	rec, ok := r.record(t, 100*time.Millisecond)
	if werr != nil || !ok {
		t.Errorf("flow still open 3s after the stacks closed (stall bound %v; record %v %+v, after %v): its record would be lost at shutdown",
			p.WriteStallTimeout(), ok, rec, time.Since(t0))
	}
}

// shutdownRig is a proxy behind a simulated GWLB endpoint whose stacks a
// test closes (the drain's end, srv.Close), with a client stack of its.
func shutdownRig(t *testing.T) (*stallRig, *netstack.Server) {
	t.Helper()
	sink := new(recordSink)
	p := New(Config{Records: records.NewWriter(nil, sink), AllowLoopback: true})
	t.Cleanup(p.Close)
	srv, ep := simulatedEndpointTCP(t, p, true, netstack.TCPOptions{})
	client, err := ep.NewClientStack(netip.MustParseAddr("198.18.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	r := &stallRig{p: p, sink: sink, client: client}
	return r, srv
}
