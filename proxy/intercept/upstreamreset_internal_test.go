package intercept

import (
	"errors"
	"io"
	"syscall"
	"testing"
	"time"
)

// TestAbortAllResetsUpstreams: a session that is aborted (a client that
// broke its connection, a write stall, a reload ending a tunnel) resets
// every connection its transport dialled to the destination, as it does
// its Upstream: the destination learns the request was cut (a RST), not
// that it ended cleanly, which a FIN says to an origin reading an upload
// without a length. A session that ends on its own closes them (a FIN).
func TestAbortAllResetsUpstreams(t *testing.T) {
	for _, abort := range []bool{true, false} {
		var set connSet
		up, origin := tcpPair(t)
		if _, err := set.add(up, nil); err != nil {
			t.Fatal(err)
		}
		if abort {
			set.abortAll()
		} else {
			set.closeAll()
		}
		origin.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := origin.Read(make([]byte, 1))
		switch {
		case abort && !errors.Is(err, syscall.ECONNRESET):
			t.Errorf("the origin's read after abortAll: %v, want a reset", err)
		case !abort && err != io.EOF:
			t.Errorf("the origin's read after closeAll: %v, want the end of the stream", err)
		}
	}
}

// TestSessionAbortResetsDialledUpstreams: Session.Abort resets the
// connections the session's transport dialled, not only its Upstream
// (abortAll, not closeAll).
func TestSessionAbortResetsDialledUpstreams(t *testing.T) {
	client, _ := tcpPair(t)
	s := &Session{Client: client}
	up, origin := tcpPair(t)
	if _, err := s.upstreams.add(up, nil); err != nil {
		t.Fatal(err)
	}
	if !s.Abort("reset", errors.New("the client's connection broke")) {
		t.Fatal("Abort did not abort the session")
	}
	origin.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := origin.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the origin's read after the session's Abort: %v, want a reset", err)
	}
}
