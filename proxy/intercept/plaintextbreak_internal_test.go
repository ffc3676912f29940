package intercept

import (
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
)

// eventStream is a PlaintextStream that lists the ends it is told of.
type eventStream struct {
	mu     sync.Mutex
	events []string
}

func (s *eventStream) ev(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

func (s *eventStream) FromClient([]byte) {}
func (s *eventStream) FromServer([]byte) {}
func (s *eventStream) ClientClosed()     { s.ev("ClientClosed") }
func (s *eventStream) ServerClosed()     { s.ev("ServerClosed") }
func (s *eventStream) ClientReset()      { s.ev("ClientReset") }
func (s *eventStream) ServerReset()      { s.ev("ServerReset") }
func (s *eventStream) Close()            { s.ev("Close") }

// readErrConn is a client conn whose reads fail with err.
type readErrConn struct {
	net.Conn
	err error
}

func (c readErrConn) Read([]byte) (int, error) { return 0, c.err }
func (c readErrConn) Close() error             { return nil }

// TestPlaintextEndsInResetWhenClientBroke: a bumped client that reset its
// connection, or vanished, aborted it, whatever the reads say after (the
// end of the stream, or the appliance's close, once the client watch has
// aborted the session), and whether anything read at all: the plaintext
// ends in the client's RST (docs/ids.md), never in its FIN. The reads'
// error alone decided, and the IDS saw a clean close. A client that broke
// nothing still closes with its FIN.
func TestPlaintextEndsInResetWhenClientBroke(t *testing.T) {
	reset := syscall.ECONNRESET
	closed := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	for _, tc := range []struct {
		name  string
		read  error // nil: nothing reads before Close
		broke error
		want  []string
	}{
		{"EOF after the client's reset", io.EOF, reset, []string{"ClientReset", "Close"}},
		{"closed after the client's reset", closed, reset, []string{"ClientReset", "Close"}},
		{"closed after the client vanished", closed, syscall.ETIMEDOUT, []string{"ClientReset", "Close"}},
		{"no read after the client's reset", nil, reset, []string{"ClientReset", "Close"}},
		{"the client's FIN", io.EOF, nil, []string{"ClientClosed", "Close"}},
		{"the appliance's close", closed, nil, []string{"Close"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &eventStream{}
			c := &plaintextConn{Conn: readErrConn{err: tc.read}, st: st, broke: func() error { return tc.broke }}
			if tc.read != nil {
				if _, err := c.Read(make([]byte, 8)); !errors.Is(err, tc.read) {
					t.Fatalf("read: %v, want %v", err, tc.read)
				}
			}
			c.Close()
			if !slices.Equal(st.events, tc.want) {
				t.Errorf("plaintext ends %v, want %v", st.events, tc.want)
			}
		})
	}
}
