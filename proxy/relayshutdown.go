package proxy

import (
	"errors"

	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
)

// The stacks' close (the drain's end) ends a relayed flow by aborting its
// client's endpoint, which wakes the relay (watchCopying, watchBroken).
// A client whose connection ended already (a clean close completed, or a
// reset after its FIN seen while the upload was still being written) has
// no endpoint to abort, and a relay whose write of its upload waits on a
// destination that takes no more would then be ended only by the
// write-stall timeout, long after the drain, its record lost. So the
// stacks' close ends every relay whose write to the destination waits
// (stallWatch.endWaiting), as the closing of a live client would.

// errShutdownWriting is what a relay ended so records, after the
// shutdown's own words (Proxy.endedError).
var errShutdownWriting = errors.New("its write to the destination was waiting")

// shutdownWaiting ends r, its write through ww waiting as the stacks
// close: the destination is reset, and bytes_out counts what was sent it
// (the reset throws the rest away; resetCut).
func (r *relay) shutdownWaiting(ww *writeWatch) {
	if ww != &r.out.ww {
		return // a write to the client: the stacks' close ends it
	}
	r.aborting.Lock()
	defer r.aborting.Unlock()
	if r.left.Load() == 0 || r.out.done.Load() || r.stalled.Load() != nil || r.broke.Load() != nil {
		return // ended, or being ended, meanwhile
	}
	if r.breakSeen.Load() != nil {
		r.cutAfterBreak(errShutdown) // the linger begun at the break
	} else {
		err := errShutdownWriting
		r.broke.Store(&err)
		r.cut.Store(r.queueCut(false, nil))
	}
	r.out.writeBreak.Store(true) // the write's error is this abort's
	intercept.Abort(r.upstream)
}
