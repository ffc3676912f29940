package proxy

import "time"

// How a UDP flow ends. Whatever ends it (the client's side closing or
// failing, a write to the destination failing, a reload denying it, the
// host loop's own deadline) only marks it done and wakes the host loop;
// the host loop's goroutine then finishes it and closes the host socket.

// end ends the flow once: stopHost wakes serveHost, which finishes it.
// err is what it failed with, if it did.
func (f *udpFlow) end(err error) {
	f.endOnce.Do(func() {
		f.endErr = err
		f.stopHost()
	})
}

// stopHost marks the flow done and wakes serveHost with a deadline in the
// past; serveHost's goroutine closes the host socket (finish). It never
// closes the socket itself: it runs on the packet path too (a client drain
// that finds the client's side closed, or a reload denying the flow), and
// the stack closing runs that with the client endpoint's lock held. A
// close waits for a RawConn.Read under way, and the host loop's may be in
// readHost, writing the destination's datagram to that same endpoint:
// neither would ever return. Setting a deadline waits for nothing.
func (f *udpFlow) stopHost() {
	f.wakeMu.Lock()
	f.done.Store(true)
	_ = f.up.SetReadDeadline(time.Unix(1, 0))
	f.wakeMu.Unlock()
}

// setHostDeadline sets the host loop's read deadline, unless the flow has
// been ended: stopHost's wake-up stands.
func (f *udpFlow) setHostDeadline(d time.Time) {
	f.wakeMu.Lock()
	if !f.done.Load() {
		_ = f.up.SetReadDeadline(d)
	}
	f.wakeMu.Unlock()
}
