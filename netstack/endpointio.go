package netstack

import (
	"bytes"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// endpointIO reads and writes an endpoint through a writer and a reader of
// its own, for Conn and UDPConn alike. Handed to the endpoint as
// interfaces, locals would be moved to the heap on every call; and the
// endpoint keeps the last reader it was handed until the next write, so the
// reader is emptied after each write: no caller's buffer (a relay's pooled
// one, TLS's record buffer) stays reachable through an idle connection.
type endpointIO struct {
	rmu sync.Mutex
	sw  tcpip.SliceWriter
	wmu sync.Mutex // held by writeLocked's callers
	br  bytes.Reader
}

// read reads what ep has into b, without waiting.
func (e *endpointIO) read(ep tcpip.Endpoint, b []byte) (tcpip.ReadResult, tcpip.Error) {
	e.rmu.Lock()
	defer e.rmu.Unlock()
	e.sw = b
	res, terr := ep.Read(&e.sw, tcpip.ReadOptions{})
	e.sw = nil
	return res, terr
}

// writeLocked hands b to ep once; the caller holds wmu.
func (e *endpointIO) writeLocked(ep tcpip.Endpoint, b []byte) (int64, tcpip.Error) {
	e.br.Reset(b)
	n, terr := ep.Write(&e.br, tcpip.WriteOptions{})
	e.br.Reset(nil)
	return n, terr
}
