package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// How a UDP flow ends. Whatever ends it (the client's side closing or
// failing, a write to the destination failing, a reload denying it, the
// host loop's own deadline) only marks it done and wakes the host loop;
// the host loop's goroutine then finishes it and closes the host socket.
// What ended it is kept (endErr, deniedBy, endHow) for its record and for
// the records of the DNS queries it leaves waiting.

// udpEnd is what ended a flow that did not fail or get denied.
type udpEnd uint8

const (
	endOther  udpEnd = iota // nothing said: a failure (endErr), a deny, or its socket failing under it
	endIdle                 // its deadline: idle, unanswered, or a DNS flow's linger
	endClient               // its client's side: closed (the packet stack's close), or its port unreachable
)

// end ends the flow once: stopHost wakes serveHost, which finishes it.
// err is what it failed with, if it did.
func (f *udpFlow) end(err error) {
	f.endOnce.Do(func() {
		f.endErr = err
		f.stopHost()
	})
}

// endIdle ends the flow at its deadline.
func (f *udpFlow) endIdle() {
	f.endOnce.Do(func() {
		f.endHow = endIdle
		f.stopHost()
	})
}

// endByClient ends the flow for a read of its client's side that failed
// with err: one that is no failure of the flow (clientError) as
// endClientGone does.
func (f *udpFlow) endByClient(err error) {
	if failed := clientError(err); failed != nil {
		f.end(failed)
		return
	}
	f.endClientGone(err)
}

// endClientGone ends the flow for its client's side having gone (closed,
// or its port unreachable), which err says: a read of it or a write to it
// failed so.
func (f *udpFlow) endClientGone(err error) {
	f.endOnce.Do(func() {
		f.endHow, f.clientWhy = endClient, err
		f.stopHost()
	})
}

// clientError is what a failed read of the client says about the flow: a
// closed conn ends it cleanly (the stack closing, the flow ending), and so
// does a client whose port answered ICMP unreachable: it closed its socket,
// and the flow is over (ending it at once gives its host port back). The
// packet stack passes on only the client's own unreachables, not another
// host's about the client's flow (netstack's checkICMPError).
func clientError(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}

// udpEnding is how a flow's ending is recorded: on its own record (result
// and err; "" keeps `ok` with no error) and on those of the DNS queries it
// leaves waiting (query).
type udpEnding struct {
	result, err string
	query       dnsEnd
}

// ending is how the flow's ending is recorded, by what ended it. A flow
// whose client's side the packet stacks' close closed (its read said the
// conn closed once they were closing; not the client's own port
// unreachable just before, review rev32a F3) was ended by the appliance's
// shutdown: its record says so in errShutdown's words, as the TCP flows'
// and intercepted sessions' do, and `reset` as theirs do, not `ok` as for a flow that idled out (which it
// was not: the drain cut it, live or idle), so that the drain's cuts read
// alike whatever the flow's protocol, and show among the errors. A query
// still waiting is recorded as what ended its flow ended it: `timeout`
// only when the flow's deadline did, or its client gave up.
func (f *udpFlow) ending() udpEnding {
	switch {
	case f.endErr != nil:
		why, result := f.endErr.Error(), records.DialResult(f.endErr)
		return udpEnding{result, why, dnsEnd{result: result, err: "the flow ended before its answer: " + why}}
	case f.deniedBy != nil:
		// The rule and policy that denied it, as the flow's record has
		// them (endDenied).
		dec := &dnsDecision{rule: f.rec.Rule, action: f.rec.Action, policy: f.rec.Policy}
		return udpEnding{"denied", "ended by a policy reload: " + f.deniedWhy,
			dnsEnd{result: "denied", err: "ended by a policy reload before its answer: " + f.deniedWhy, dec: dec}}
	case f.endHow == endClient && f.p.stacksClosing.Load() && stackEnded(f.clientWhy):
		return udpEnding{"reset", errShutdown.Error(), dnsEnd{result: "reset", err: errShutdown.Error() + " before its answer"}}
	case f.endHow == endClient:
		// The client closed its socket (its port answered unreachable):
		// it gave up waiting, as a stub resolver does at its own timeout.
		return udpEnding{query: dnsEnd{result: "timeout", err: "the client's side of the flow closed before its answer: " + f.clientWhy.Error()}}
	}
	return udpEnding{query: dnsTimedOut}
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

// finish stops the relaying, closes both sides (or, for a flow a reload
// denied, holds the client's as a denied flow's) and writes the records.
func (f *udpFlow) finish() {
	f.done.Store(true)
	if f.ready != nil {
		f.ready.OnReadable(nil)
	}
	// An empty critical section: a drain under way ends first, and later
	// ones see done.
	f.outMu.Lock()
	//lint:ignore SA2001 the wait is the point
	f.outMu.Unlock()

	f.end(nil) // first: it orders what ended the flow before what follows
	// Here, on the host loop's goroutine once its Read has returned, the
	// close waits for nothing (see stopHost).
	f.up.Close()
	held := f.deniedBy != nil && f.ready != nil
	if !held {
		f.client.Close()
	}
	if f.readerDone != nil {
		<-f.readerDone
	}
	e := f.ending()
	note := ""
	if f.dns != nil {
		f.dns.close(e.query)
		note = f.dns.notQueries()
	}
	f.rec.BytesOut, f.rec.BytesIn = f.bytesOut, f.bytesIn
	if e.result != "" {
		f.rec.Result, f.rec.Error = e.result, e.err
	}
	if f.bytesIn == 0 && f.endErr == nil && f.deniedBy == nil {
		// Not `timeout`: much UDP is one-way by design (syslog, metrics,
		// flow exports), and would flood the errors; but `ok` alone read
		// as a flow that was answered. Not for a flow a reload denied:
		// the destination's datagram that met the deny was dropped
		// unread, so nothing can say it sent nothing.
		note = joinNotes(silentNote, note)
	}
	f.rec.Error = joinNotes(f.rec.Error, note)
	unreached := f.unreached()
	if unreached {
		f.p.stats.udpDialErrors.Add(1)
	}
	if unreached && f.bytesOut <= dialErrorBucketBytes {
		// A small datagram to a closed port (or the few the QUIC gate
		// held) bought this record: it comes from the client's bucket
		// (denylimit.go). One whose opening datagrams carried more is
		// recorded whatever the bucket holds: the destination took
		// them in before its kernel answered.
		f.p.finishDialError(f.rec, f.start, f.share)
	} else {
		f.p.finish(f.rec, f.start)
	}
	if f.rec.Kind == "quic" || f.quicUnread {
		f.p.udp.quicPaths.closed(f)
	}
	if held {
		// As a flow denied from the start: its further datagrams are
		// discarded, with no record each, until it idles or a reload allows it.
		f.hold(f.deniedBy)
	}
}

// unreached reports a flow whose destination answered port or host
// unreachable before it sent anything back, and to which its client sent
// nothing beyond the datagrams it was opened with: it ends at once, giving
// its place in its client's share back, so the share does not bound how
// fast a client makes such flows, each for the price of one datagram (or
// the few its QUIC gate held). A flow its destination answered first is
// not one: its record cost the destination's cooperation too. Nor is one
// that relayed more of its client's datagrams (review rev31c F1): it
// carried data, for as long as it lived, and only its last datagram met
// the closed port; from the bucket, a client that had spent it first
// would keep that flow out of the records. Its record comes from the
// bucket only when its opening datagrams were small too
// (dialErrorBucketBytes).
func (f *udpFlow) unreached() bool {
	if f.endErr == nil || f.bytesIn != 0 || f.sentOut != f.openedOut {
		return false
	}
	switch records.DialResult(f.endErr) {
	case "refused", "unreachable":
		return true
	}
	return false
}

// heldBytes is what the datagrams held counts.
func heldBytes(held [][]byte) int {
	n := 0
	for _, d := range held {
		n += len(d)
	}
	return n
}

// dialHostUDP opens a flow's host socket: net.DialUDP, a variable so that
// tests can make it fail.
var dialHostUDP = net.DialUDP

// silentNote is the note of a relayed flow whose destination sent nothing
// back: a QUIC server that never answered, a DNS server that answered no
// query, as well as a one-way stream.
const silentNote = "the destination sent nothing"

// joinNotes joins two notes of a record's error, either of which may be
// empty.
func joinNotes(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}
