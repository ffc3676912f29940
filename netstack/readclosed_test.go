package netstack_test

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestReadAfterAbortSaysClosed: once the appliance has aborted a conn (a
// client watch's Session.Abort for a client that reset), Read says
// net.ErrClosed, as TryRead does, never io.EOF: every reader of a client
// conn takes io.EOF for the client's FIN, and the IDS plaintext of a
// bumped client that reset showed a clean close. Both for a conn whose
// client reset it first (the watch's BrokenError took the stack's one
// report) and for a live one.
func TestReadAfterAbortSaysClosed(t *testing.T) {
	for _, clientReset := range []bool{true, false} {
		name := map[bool]string{true: "client reset", false: "live"}[clientReset]
		t.Run(name, func(t *testing.T) {
			r := newConnRig(t)
			_, cep, c := r.dialEndpoint()
			if clientReset {
				cep.Abort()
				for end := time.Now().Add(waitFor); !c.Broken(); time.Sleep(time.Millisecond) {
					if time.Now().After(end) {
						t.Fatal("not Broken after the client's RST")
					}
				}
				if why := c.BrokenError(); why == nil {
					t.Fatal("BrokenError after the client's RST: nil")
				}
			}
			c.Abort()
			_, err := c.Read(make([]byte, 8))
			if errors.Is(err, io.EOF) || !errors.Is(err, net.ErrClosed) {
				t.Errorf("Read after the appliance's Abort: %v; want net.ErrClosed", err)
			}
		})
	}
}
