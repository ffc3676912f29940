// Fault injection and clock control: throttling, error answers, outages,
// latency.

package cwlogstest

import (
	"fmt"
	"net"
	"net/http"
	"time"
)

// SetNow replaces the clock used to judge events too old or too new.
func (s *Server) SetNow(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// SetStoreEvents chooses whether accepted events are kept (the default) or
// only counted, for benchmarks.
func (s *Server) SetStoreEvents(store bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store = store
}

// Throttle answers the next n calls (of the named operations, or of any
// operation when none is named) with ThrottlingException (HTTP 400).
func (s *Server) Throttle(n int, ops ...string) {
	s.addFault(&fault{status: 400, code: "ThrottlingException", msg: "Rate exceeded", remaining: n, ops: ops})
}

// Fail answers the next n calls (of the named operations, or of any) with
// the HTTP status: 500 carries InternalFailure, 503 ServiceUnavailableException,
// any other status a generic error code.
func (s *Server) Fail(n, status int, ops ...string) {
	code := "InternalFailure"
	switch {
	case status == 503:
		code = "ServiceUnavailableException"
	case status < 500:
		code = "InvalidParameterException"
	}
	s.addFault(&fault{status: status, code: code, msg: "injected failure", remaining: n, ops: ops})
}

// FailWithCode answers the next n calls (of the named operations, or of any)
// with the given HTTP status and error code.
func (s *Server) FailWithCode(n, status int, code string, ops ...string) {
	s.addFault(&fault{status: status, code: code, msg: "injected " + code, remaining: n, ops: ops})
}

func (s *Server) addFault(f *fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f)
}

// ClearFaults drops the injected errors not yet answered.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// FaultsServed returns how many injected errors (not outages) were answered.
func (s *Server) FaultsServed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

// SetLatency delays every answer by d (0 to stop). A request whose client
// gives up during the delay is not processed.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetAnswerDelay makes every request processed at once, as the real
// service processes one it has read whole, and its answer wait d; 0
// answers at once. A client that gives up meanwhile gets no answer, but
// what it sent is stored (SetLatency delays before processing, and
// stores nothing for a client that gave up): a resend stores it again.
func (s *Server) SetAnswerDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answerDelay = d
}

// Outage starts an outage lasting d; see OutageMode.
func (s *Server) Outage(d time.Duration, mode OutageMode) {
	s.mu.Lock()
	s.outageUntil = time.Now().Add(d)
	s.outageMode = mode
	var idle []net.Conn
	if mode == OutageRefuse && s.ln != nil {
		s.ln.Close()
		s.ln = nil
		s.connMu.Lock()
		for c, st := range s.conns {
			if st == http.StateIdle || st == http.StateNew {
				idle = append(idle, c)
			}
		}
		s.connMu.Unlock()
	}
	if s.outageTimer != nil {
		s.outageTimer.Stop()
	}
	s.outageTimer = time.AfterFunc(d, s.EndOutage)
	s.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// EndOutage ends an outage now; the endpoint listens again on the same
// address.
func (s *Server) EndOutage() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outageUntil = time.Time{}
	if s.outageTimer != nil {
		s.outageTimer.Stop()
		s.outageTimer = nil
	}
	if s.ln != nil || s.closed {
		return
	}
	// The port was ours a moment ago; retry briefly in case the kernel
	// still holds it.
	var err error
	for range 100 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			s.ln = ln
			go s.srv.Serve(ln)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	panic(fmt.Sprintf("cwlogstest: cannot listen again on %s: %v", s.addr, err))
}

// InOutage reports whether an outage is under way.
func (s *Server) InOutage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.outageUntil.IsZero()
}
