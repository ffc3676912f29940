package proxy

import (
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// TestQUICGateEndRecorded: a QUIC flow whose client side ends while the
// gate still waits for the rest of its ClientHello is recorded reset, "the
// flow ended before its QUIC ClientHello was read"; when the appliance's
// shutdown ended it (the stacks closing close the flows' client sides),
// the record says so in errShutdown's words first, as every other flow the
// drain cuts does. Before, the gate's record said only that the flow ended,
// as if its client had gone.
func TestQUICGateEndRecorded(t *testing.T) {
	flight := quicFirstFlight(t, "www.example.test")
	if len(flight) < 2 {
		t.Skip("quic-go's ClientHello fits one datagram here: the gate holds nothing")
	}
	const left = "the flow ended before its QUIC ClientHello was read"
	for _, tc := range []struct {
		name      string
		shutdown  bool
		wantError string
	}{
		{"client side ends", false, left},
		{"shutdown", true, errShutdown.Error() + ": " + left},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, recs := udpProxy(t, quicPolicy, nil)
			dst := newUDPSink(t, false)
			c := newFakeUDPClient(quicClient, dst.addr())
			c.inject(flight[0])
			go p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: quicClient, Dest: dst.addr()}, c)
			time.Sleep(200 * time.Millisecond) // the gate waits for the rest
			if tc.shutdown {
				p.StacksClosing()
			}
			c.Close()
			r := recs.records(t, 1)[0]
			if r.Kind != "quic" || r.Result != "reset" || r.Error != tc.wantError {
				t.Errorf("record kind %s result %s error %q; want quic, reset, %q", r.Kind, r.Result, r.Error, tc.wantError)
			}
			if n := len(dst.received()); n != 0 {
				t.Errorf("the destination received %d datagrams of an unread ClientHello", n)
			}
		})
	}
}
