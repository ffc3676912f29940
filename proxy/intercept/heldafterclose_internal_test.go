package intercept

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
)

// heldTally is a client connection's count of what its requests hold.
type heldTally struct{ n atomic.Int64 }

func (h *heldTally) AddHeld(delta int64) { h.n.Add(delta) }

// TestHeldGivenBackWhenCloseCameFirst: a request's charge to its client
// connection (held.go) handed to its response body after goproxy has
// begun to close it (keepHeld after Close) is given back at once: no
// later Close will. Kept, the memory reclaim went on weighing a request
// long done, and took the connection for a heavier one than it was.
func TestHeldGivenBackWhenCloseCameFirst(t *testing.T) {
	tally := &heldTally{}
	charge := &heldCharge{to: tally}
	charge.n.Store(4096)
	tally.AddHeld(4096)
	body := &recordingBody{ReadCloser: io.NopCloser(strings.NewReader("")), done: endFunc(func() {})}
	body.Close()
	body.keepHeld(charge)
	if n := tally.n.Load(); n != 0 {
		t.Errorf("%d bytes still charged to the client connection after the body's Close, want 0", n)
	}
}
