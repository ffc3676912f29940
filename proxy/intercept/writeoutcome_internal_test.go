package intercept

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestWriteFailureOutcome: an HTTP/1 response whose last write to the
// client failed (werr, hijackedConn.responseWriteErr) is no success, and
// its record's result says how the write failed: timeout when it ran out
// of time (a client that stopped reading), reset when the client broke its
// connection (its reset, kept by the connection: ClientBroke), and a
// timeout stays a timeout when the client resets only after: the stall
// came first. The bytes of the last write that brought any are not
// counted, also when the body's end came in a read of its own after them.
func TestWriteFailureOutcome(t *testing.T) {
	timedOut := &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}
	resetW := &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}
	for _, tc := range []struct {
		name        string
		werr, broke error
		want        string
		wantWhy     string
		endApart    bool // the body's end came in a read of its own, after the last bytes
	}{
		{"write timed out", timedOut, nil, "timeout", "writing to it", false},
		{"client reset", resetW, syscall.ECONNRESET, "reset", "the client's connection broke", false},
		{"write timed out, then the client reset", timedOut, syscall.ECONNRESET, "timeout", "writing to it", false},
		{"client vanished", resetW, syscall.ETIMEDOUT, "timeout", "the client's connection broke", false},
		{"write timed out, the end read apart", timedOut, nil, "timeout", "writing to it", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts := []string{"0123456789", "final"}
			if tc.endApart {
				parts = append(parts, "") // (0, io.EOF)
			}
			body := &recordingBody{ReadCloser: io.NopCloser(&eofWithLast{parts: parts})}
			buf := make([]byte, 64)
			for range parts {
				body.Read(buf) // the last one with io.EOF
			}
			result, why, delivered := body.outcome(context.Background(), tc.werr, tc.broke)
			t.Logf("%s %q, %d bytes", result, why, delivered)
			if result != tc.want || !strings.Contains(why, tc.wantWhy) {
				t.Errorf("outcome %s %q, want %s, %q", result, why, tc.want, tc.wantWhy)
			}
			if delivered != int64(len("0123456789")) {
				t.Errorf("%d bytes counted, want %d: the failed last write's are not", delivered, len("0123456789"))
			}
		})
	}
}
