package netstack

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// reconnect has the rig's client reset its connection with the exact
// sequence number, waits until the stack has taken the RST (its endpoint
// gone from the demultiplexer), and opens a new connection on the same
// ports with a later ISN, as Linux picks one; the flow-table entry is the
// old connection's, held for a while after a reset. The rig's conn and
// sequence numbers become the new connection's.
func (r *delayRig) reconnect() {
	t := r.t
	t.Helper()
	key := r.flow(t).key
	r.batch(clientSegment(r.client, r.server, r.seq, r.ack, header.TCPFlagRst|header.TCPFlagAck, nil))
	waitUntil(t, 5*time.Second, "the stack to take the RST", func() (bool, string) {
		return !r.s.holdsTCP(&key), "the old endpoint is still in the stack"
	})
	r.reopen(r.seq + 1<<20)
}

// reopen opens a new connection on the rig's ports whose SYN has
// sequence number isn, once the old one is gone from the stack, and makes
// it the rig's conn.
func (r *delayRig) reopen(isn uint32) {
	t := r.t
	t.Helper()
	r.seq = isn
	r.batch(clientSegmentOpts(r.client, r.server, r.seq, 0, header.TCPFlagSyn, nil, nil))
	r.seq++
	r.ack = readReplySegment(t, r.gwlb, header.TCPFlagSyn|header.TCPFlagAck).SequenceNumber() + 1
	r.batch(clientSegmentOpts(r.client, r.server, r.seq, r.ack, header.TCPFlagAck, r.opts, nil))
	select {
	case r.conn = <-r.conns:
	case <-time.After(5 * time.Second):
		t.Fatal("the new connection was not accepted")
	}
	t.Cleanup(r.conn.Abort)
}

// TestDelayedAckReusedFlowStartsQuick: a new connection on the 4-tuple of
// an ended one whose flow-table entry is still held starts as a new flow
// does, its ACKs leaving at once until it has answered within the delay.
// The delayed-ACK state lived in the flow and carried over: the new
// connection's first request had its ACK held, and a client writing it in
// two pieces under Nagle's algorithm waited the whole delay.
func TestDelayedAckReusedFlowStartsQuick(t *testing.T) {
	const delay = 300 * time.Millisecond
	for _, fam := range groFamilies {
		t.Run(fam.name, func(t *testing.T) {
			r := newDelayRig(t, fam.client, fam.server, delay, nil, nil)
			r.quicken(0)
			r.reconnect()
			start := time.Now()
			r.batch(r.data([]byte("GET /first-of-new-connection")))
			r.pureAck(delay/2, r.seq, "the first request of a new connection on a reused flow")
			if took := time.Since(start); took > delay/2 {
				t.Fatalf("the new connection's first ACK left after %v", took)
			}
			r.wantAcks("the first request of a new connection on a reused flow", 0, 0)
			// And it becomes quick as a new flow does.
			r.answer(t, "200 first")
			r.batch(r.data([]byte("GET /2")))
			r.waitHeld(1)
			r.pureAck(2*delay, r.seq, "the held ACK of the new connection")
			r.tapped()
		})
	}
}
