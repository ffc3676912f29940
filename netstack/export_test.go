package netstack

import (
	"net"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// AcceptHandler accepts every TCP connection and hands it to the test
// (Conns, buffered by the test; a connection it has no room for is
// aborted). It is exported to the package's external tests too.
type AcceptHandler struct{ Conns chan *Conn }

// HandleTCP implements Handler.
func (h *AcceptHandler) HandleTCP(req *TCPRequest) {
	c, err := req.Accept()
	if err != nil {
		return
	}
	select {
	case h.Conns <- c:
	default:
		c.Abort()
	}
}

// HandleUDP implements Handler: it closes the flow.
func (*AcceptHandler) HandleUDP(_ FlowInfo, conn net.Conn) { conn.Close() }

// HandleEcho implements Handler: it answers nothing.
func (*AcceptHandler) HandleEcho(EchoRequest) {}

// ReceiveBuffer is the size of the receive buffer of c's endpoint.
func (c *Conn) ReceiveBuffer() int64 { return c.ep.SocketOptions().GetReceiveBufferSize() }

// ReclaimWith runs one round of the reclaim at critical memory, calling
// between with the connections taken before they are reset.
func (s *Server) ReclaimWith(between func(taken []*Conn)) {
	k, conns := s.live.takeHeaviest(reclaimFloor, reclaimBatch)
	between(conns)
	s.resetTaken(k, conns)
}

// TCPTimedOut is how many connections the server's stacks have given up on
// for want of acknowledgements (gVisor's EstablishedTimedout).
func (s *Server) TCPTimedOut() uint64 {
	var n uint64
	s.stacks.Range(func(_, v any) bool {
		n += v.(*endpointStack).stack.Stats().TCP.EstablishedTimedout.Value()
		return true
	})
	return n
}

// AbortReclaimed is the reclaim's reset of c (abortReclaimed).
func (c *Conn) AbortReclaimed() bool { return c.abortReclaimed() }

// TakeErrorAsWriter does what a Write that takes the stack's error does
// first: it holds the write lock and takes the error from the stack. The
// function it returns does the rest: it keeps the error as Write does, and
// lets go of the lock.
func (c *Conn) TakeErrorAsWriter() (keep func()) {
	c.rw.wmu.Lock()
	terr := c.ep.LastError()
	return func() {
		if terr != nil {
			c.keepClientBreak(terr)
		}
		c.rw.wmu.Unlock()
	}
}

// FINIn reports whether the client's FIN has reached c's endpoint (the
// server's side not yet closed: CLOSE-WAIT).
func (c *Conn) FINIn() bool {
	return tcp.EndpointState(c.ep.State()) == tcp.StateCloseWait
}
