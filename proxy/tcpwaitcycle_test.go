package proxy

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// Reloads flipping between a policy of names and one of addresses send a
// silent dialled-first connection from serve to awaitName and back to
// serve, once per flip: a loop in serve, not a call back into it, or the
// session's stack grew by a few frames every cycle for as long as the
// flipping went on (found by review r8s29 F1: 150 cycles, over 500 frames).
func TestWaitingNamedCycleDoesNotNest(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = 30 * time.Millisecond
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	allow, names := mustPolicy(t, "policy: {default: allow}\n"), mustPolicy(t, namesOnly)
	ln := testnet.Serve(t, "127.0.0.1:0", func(c net.Conn) { c.Read(make([]byte, 1)) })
	c := r.dial(t, ln.Addr().(*net.TCPAddr).AddrPort())
	defer c.Close()
	waitListed(t, r.p, 1)
	const cycles = 50
	for range cycles {
		r.p.cfg.Policy.Store(names)
		waitListed(t, r.p, 0) // woken: waiting for a name, undialled
		r.p.cfg.Policy.Store(allow)
		waitListed(t, r.p, 1) // its wait ended under allow: dialled, serve again
	}
	buf := make([]byte, 1<<22)
	st := string(buf[:runtime.Stack(buf, true)])
	depth := 0
	for _, g := range strings.Split(st, "\n\n") {
		depth = max(depth, strings.Count(g, "tcpSession).serve("))
	}
	if depth != 1 {
		t.Errorf("serve nested %d deep on one goroutine after %d reload cycles, want 1", depth, cycles)
	}
	r.p.cfg.Policy.Store(names)
	waitListed(t, r.p, 0)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(make([]byte, 1))
	if rec := r.record(t, c, "tcp"); rec.Action != "deny" {
		t.Errorf("the silent client's record: %s/%s, want a tcp deny", rec.Action, rec.Result)
	}
	waitNoWaitingSlots(t, r.p, "at the end")
}
