package intercept

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// brokeConn is a client connection that says what broke it, as
// netstack.Conn.ClientBroke does once a read or a write took the break.
type brokeConn struct {
	net.Conn
	why error
}

func (c brokeConn) ClientBroke() error { return c.why }

// brokeSession is a session whose client connection broke with why, its
// record so far saying result, and whose client watch saw the break come
// with broke (NoteClientBreak's breakUnderWay, breakBetweenRequests, or 0:
// not seen).
func brokeSession(t *testing.T, why error, result string, broke int32) *Session {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	s := &Session{Client: brokeConn{Conn: a, why: why}, Record: &records.Record{Result: result}}
	s.broke.Store(broke)
	return s
}

// TestClientBreakSeenByReadRecorded: a session that ended on the read that
// took its client's break, before the client watch's Abort, has its
// records say what the watch would have said (noteClientBreak): a client
// that vanished (ETIMEDOUT, its keep-alives unanswered) is timeout
// whenever it went, a reset is reset when a request was under way, and
// nothing when the client reset between requests (it lost nothing, as
// after a FIN). A record that says another result already, and a reason
// an Abort gave first, are kept: each says what ended the session first.
func TestClientBreakSeenByReadRecorded(t *testing.T) {
	reset := errors.New("connection reset by peer")
	for _, tc := range []struct {
		name   string
		why    error
		result string // the record's so far
		broke  int32
		want   string // the abort reason's result, "" for none
	}{
		{"vanished between requests", syscall.ETIMEDOUT, "ok", breakBetweenRequests, "timeout"},
		{"vanished under way", syscall.ETIMEDOUT, "ok", breakUnderWay, "timeout"},
		{"reset under way", reset, "ok", breakUnderWay, "reset"},
		{"reset between requests", reset, "ok", breakBetweenRequests, ""},
		{"reset under way, record said error already", reset, "error", breakUnderWay, ""},
		{"vanished, record said error already", syscall.ETIMEDOUT, "error", breakBetweenRequests, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := brokeSession(t, tc.why, tc.result, tc.broke)
			s.noteClientBreak()
			a := s.aborted.Load()
			switch {
			case tc.want == "" && a != nil:
				t.Errorf("the session's records would say %s (%v), want what they said", a.result, a.err)
			case tc.want == "":
			case a == nil:
				t.Errorf("the session's records would not say the break, want %s", tc.want)
			case a.result != tc.want || !strings.Contains(a.err.Error(), "the client's connection broke"):
				t.Errorf("the session's records would say %s (%v), want %s, the client's connection broke", a.result, a.err, tc.want)
			}
		})
	}
	t.Run("an Abort came first", func(t *testing.T) {
		s := brokeSession(t, syscall.ETIMEDOUT, "ok", breakUnderWay)
		stall := errors.New("writing to the client stalled")
		s.Abort("timeout", stall)
		s.noteClientBreak()
		if a := s.aborted.Load(); a == nil || a.err != stall {
			t.Errorf("the Abort's reason was replaced: %+v", a)
		}
	})
}
