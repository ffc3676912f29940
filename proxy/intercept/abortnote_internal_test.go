package intercept

import (
	"errors"
	"io"
	"testing"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestAbortNoteKeepsRefusal: what an Abort was told goes into the records
// of the session's requests, but a refusal's record keeps its result
// (denied): the policy's decision stands whatever ended the connection
// after it, and a denial recorded as a reset would be counted as neither.
func TestAbortNoteKeepsRefusal(t *testing.T) {
	client, _ := tcpPair(t)
	s := &Session{Client: client}
	s.Abort("reset", errors.New("the client's connection broke"))
	denied := records.Record{Result: "denied", Action: "deny", Error: "denied by rule"}
	s.noteAbort(&denied)
	if denied.Result != "denied" || denied.Error != "denied by rule" {
		t.Errorf("a denial's record after the Abort: %s %q, want denied, unchanged", denied.Result, denied.Error)
	}
	ok := records.Record{Result: "ok"}
	s.noteAbort(&ok)
	if ok.Result != "reset" || ok.Error != "the client's connection broke" {
		t.Errorf("a request's record after the Abort: %s %q, want reset, the Abort's error", ok.Result, ok.Error)
	}
}

// TestAbortClosesAbortedSignal: Abort closes the signal a tunnel's drain
// waits on (abortedSignal), also when it was taken before: the drain,
// which nothing Abort resets can end once goproxy's copy toward the
// client stopped, would otherwise hold the upstream and the records for
// the whole upgradeDrain.
func TestAbortClosesAbortedSignal(t *testing.T) {
	client, _ := tcpPair(t)
	s := &Session{Client: client}
	sig := s.abortedSignal()
	s.Abort("reset", errors.New("the client's connection broke"))
	select {
	case <-sig:
	default:
		t.Error("the aborted signal is still open after Abort")
	}
}

// TestHandshakeResetOnlyForReset: a failed client handshake is the
// client's reset when its error is the reset (an errno, or the packet
// stack's words for it), or the connection's end while the session was
// aborted for a reset; an end of the stream under an Abort for another
// cause (a vanished client's timeout) is not a reset.
func TestHandshakeResetOnlyForReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		a    *abortReason
		want bool
	}{
		{"the stack's words", errors.New("read tcp 198.18.9.9:443: connection reset by peer"), nil, true},
		{"end of stream, aborted for a reset", io.EOF, &abortReason{result: "reset"}, true},
		{"end of stream, aborted for a timeout", io.EOF, &abortReason{result: "timeout"}, false},
		{"end of stream, no abort", io.ErrUnexpectedEOF, nil, false},
	} {
		if got := handshakeReset(tc.err, tc.a); got != tc.want {
			t.Errorf("%s: handshakeReset %v, want %v", tc.name, got, tc.want)
		}
	}
}
