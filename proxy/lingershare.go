package proxy

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/clientkey"
)

// A connection lingers after its client's flow has ended: a relayed
// destination, or a bumped WebSocket tunnel's, whose client reset (or
// vanished) after its FIN keeps its host socket open until the destination
// has acknowledged the upload's tail (relayfin.go, intercept's
// tunnellinger.go), for up to the write-stall timeout (a minute for a
// tunnel). The client's flow-table entry is forgotten soon after its reset
// (the transitory timeout), giving its flow share back: without a share
// of their own, one client resetting uploads to a destination of its own
// that reads nothing held a host socket, an fd, a goroutine and a poll of
// the socket per linger, its flow share over again every transitory
// timeout, 30 times over within the 15-minute bound.

// DefaultMaxLingeringPerClient is how many connections one client may have
// lingering at once unless Config.MaxLingeringPerClient says otherwise:
// as many as it may have waiting for their first bytes
// (DefaultMaxWaitingTCPPerClient), a few KiB of heap and a goroutine each,
// and a look at the socket a second once they have lingered a while
// (hostconn.Linger). A client past it has its next linger cut short: the
// destination reset at once, and the record saying the tail was not
// delivered. Real clients linger only when they reset with an answer
// unread and their destination is slower than they were.
const DefaultMaxLingeringPerClient = 1024

func (p *Proxy) lingerLimit() int {
	if n := p.cfg.MaxLingeringPerClient; n > 0 {
		return n
	}
	return DefaultMaxLingeringPerClient
}

// lingerShareError says a linger was cut short: the client held its share
// of lingering connections.
type lingerShareError struct {
	holder string // clientkey.Holder's
	limit  int
	cuts   *atomic.Uint64 // linger_share_cuts: see counted
}

// counted counts the linger as cut short (linger_share_cuts): by whoever
// cut it, as a refusal of the share alone cuts nothing when the one look
// finds the tail delivered.
func (e *lingerShareError) counted() { e.cuts.Add(1) }

func (e *lingerShareError) Error() string {
	return fmt.Sprintf("%s held its share of lingering connections (%d)", e.holder, e.limit)
}

// takeLinger takes one of the lingering connections of the client k. It
// returns what gives it back (once, however often it is called), or, when
// the client holds its share already, an error saying so: the linger is
// to be cut short then, after a look (the error's counted counts the cut,
// if it was one).
func (p *Proxy) takeLinger(k shareKey) (release func(), err error) {
	limit := p.lingerLimit()
	if ok, _ := p.tcp.lingers.acquire(k, limit, time.Now()); !ok {
		return nil, &lingerShareError{holder: clientkey.Holder(k.client), limit: limit, cuts: &p.tcp.lingerCuts}
	}
	var once sync.Once
	return func() { once.Do(func() { p.tcp.lingers.release(k) }) }, nil
}

// lingerTaker is what a relay takes its linger with: p.takeLinger for its
// client.
func (p *Proxy) lingerTaker(k shareKey) func() (func(), error) {
	return func() (func(), error) { return p.takeLinger(k) }
}
