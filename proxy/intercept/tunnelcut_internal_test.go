package intercept

import (
	"bufio"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// A tunnel that the client's break before its FIN cut resets its
// destination, never passing it a clean end of a stream the client did
// not end. The session's Abort does, but it signals (abortedSignal)
// before it resets the upstream, and may come after breakAbortWait on a
// loaded machine: the tunnel's own close, a plain one, won either race,
// and the destination read all it was sent and then the end
// (TestBumpedWebSocketUploadSurvivesClientBreakAfterFIN/vanish_before_FIN
// failed once in a full -race run).
func TestTunnelCutByBreakBeforeFINResetsDestination(t *testing.T) {
	for _, tc := range []struct {
		name       string
		aborted    bool // the Abort's signal came, its reset not yet
		afterFIN   bool
		signalOnly bool // the break signalled from the packet path, no read or write took it yet
		reset      bool
	}{
		{"abort signalled, reset not yet", true, false, false, true},
		{"abort late", false, false, false, true},
		{"abort late, break signalled only", false, false, true, true},
		{"break after the FIN", false, true, false, false}, // the destination gets it all and the end
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, origin := tcpPair(t)
			defer origin.Close()
			aborted := make(chan struct{})
			if tc.aborted {
				close(aborted)
			}
			clientBroke, clientBreak := func() error { return syscall.ETIMEDOUT }, make(chan struct{})
			if tc.signalOnly {
				clientBroke = func() error { return nil }
				close(clientBreak)
			}
			u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { return true },
				ended: make(chan struct{}), tunnel: true, aborted: aborted,
				clientBroke: clientBroke, clientBreak: clientBreak,
				breakAfterFIN: func() bool { return tc.afterFIN }}
			if _, err := u.Write(make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- u.Close() }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not return")
			}
			_ = origin.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := io.Copy(io.Discard, origin)
			switch {
			case tc.reset && !errors.Is(err, syscall.ECONNRESET):
				t.Errorf("the destination read %d bytes, then %v; want a reset", n, err)
			case !tc.reset && (err != nil || n != 1000):
				t.Errorf("the destination read %d bytes, then %v; want 1000 and the end", n, err)
			}
		})
	}
}

var _ net.Conn
