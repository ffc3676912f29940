package intercept

import (
	"context"
	"io"
	"strings"
	"testing"
)

// The last read of a body of known length can bring its end with its
// bytes (n, io.EOF), before goproxy writes them to the client. An HTTP/2
// client that resets the stream then (its context done before the handler
// closes the body) did not get the response whole: the record must say
// the client went away, without those bytes, not ok with all of them. A
// client still there when the body closes got it: ok. Internal: which
// comes first, the read or the reset, is the scheduler's to decide in a
// real exchange, so the test takes the steps in that order itself.
func TestFinalReadThenClientGone(t *testing.T) {
	const first, last = "0123456789", "final"
	for _, gone := range []bool{true, false} {
		body := &recordingBody{ReadCloser: io.NopCloser(&eofWithLast{parts: []string{first, last}})}
		buf := make([]byte, 32<<10)
		if n, err := body.Read(buf); n != len(first) || err != nil {
			t.Fatalf("first read: %d, %v", n, err)
		}
		if n, err := body.Read(buf); n != len(last) || err != io.EOF {
			t.Fatalf("last read: %d, %v; want its bytes with io.EOF", n, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if gone {
			cancel() // the client's RST_STREAM, while goproxy writes the last bytes
		}
		result, why, delivered := body.outcome(ctx, nil, nil)
		cancel()
		t.Logf("client gone %v: %s %q, %d bytes", gone, result, why, delivered)
		switch {
		case gone && (result != "error" || !strings.Contains(why, "client went away") || delivered != int64(len(first))):
			t.Errorf("client gone after the last read: %s %q, %d bytes; want error, the client went away, %d bytes", result, why, delivered, len(first))
		case !gone && (result != "ok" || delivered != int64(len(first)+len(last))):
			t.Errorf("client there: %s %q, %d bytes; want ok, %d", result, why, delivered, len(first)+len(last))
		}
	}
}

// eofWithLast returns parts in turn, the last with io.EOF, as a net/http
// body of known length does.
type eofWithLast struct{ parts []string }

func (r *eofWithLast) Read(p []byte) (int, error) {
	if len(r.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.parts[0])
	r.parts = r.parts[1:]
	if len(r.parts) == 0 {
		return n, io.EOF
	}
	return n, nil
}
