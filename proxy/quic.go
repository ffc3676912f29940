package proxy

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff/quic"
)

// The QUIC gate. A UDP flow whose first datagram is a QUIC Initial is held,
// its datagrams kept and not sent on, until the ClientHello they carry is
// complete, and is then decided as quic on its SNI, like TLS over TCP. No
// host socket exists before the decision: a denied flow never reaches its
// destination, not even with its first datagram. The hold is bounded in
// datagrams, bytes and time, so a client that never completes a
// ClientHello holds little, and not for long.
const (
	// quicGateDatagrams is the Assembler's own bound: real ClientHellos
	// take one to three datagrams, and some retransmissions.
	quicGateDatagrams = quic.MaxDatagrams
	// quicGateBytes bounds the bytes held: 16 full-size Initials at the
	// 1,500-byte MTU most paths have, or a few at the GWLB's 8,500.
	quicGateBytes = 24 << 10
)

// quicGateWait bounds the wait for the rest of a ClientHello. A client
// sends it at once; one that does not has lost a datagram and retransmits
// within its first probe timeout (about a second at most). A variable for
// tests.
var quicGateWait = 3 * time.Second

// QUIC cannot be bumped: its TLS is inside QUIC's own encryption, and the
// appliance cannot terminate QUIC. Blocking it makes browsers and other
// HTTP/3 clients fall back to TLS over TCP, which is then bumped.
const quicBumpReason = "QUIC cannot be bumped: blocked, so that the client falls back to TLS over TCP, which is bumped"

// errClientGone is the gate's error when the client's side closed.
var errClientGone = errors.New("the client's side closed")

// serveQUIC decides a flow that began with a QUIC Initial (first, read into
// the pooled firstBuf).
func (f *udpFlow) serveQUIC(first []byte, firstBuf *[]byte) {
	// Counted while it is decided: it holds its datagrams and what is read
	// from them (up to about 72 KiB with its goroutine at the gate,
	// policy.md), and
	// has no host socket, which udp_active counts, so that a client
	// holding its share of flows at the gate shows in /stats. A relayed
	// flow is in udp_active by the time this returns.
	f.p.stats.quicGated.Add(1)
	defer f.p.stats.quicGated.Add(-1)
	held, hello, err := f.gateQUIC(first, firstBuf)
	// Decided under the policy in force now, as a TCP connection's first
	// bytes are (policyAtFirstBytes): the gate may have waited across a
	// reload for the rest of the ClientHello, and the decision, the
	// destination check (which can wait here, unlike the relay's recheck),
	// the record and the relay must all follow the policy that decided.
	// Nothing else reads f.pol before the relay starts.
	f.pol = f.p.cfg.Policy.Load()
	f.rec.Kind = "quic"
	if errors.Is(err, errClientGone) {
		f.clientLeft("the flow ended before its QUIC ClientHello was read", err)
		return
	}
	if err != nil {
		reason := "QUIC ClientHello could not be read: " + err.Error()
		if f.pol.NamesMatter() {
			// Without a name, deciding on addresses would let the
			// flow past every rule that looks at names or at quic.
			f.rec.Rule, f.rec.Policy = "", f.pol.ID() // no rule, but the policy looks at names
			f.quicUnread = true                       // held as such: see udpSubject
			f.refuse(reason)                          // not remembered: see quicpaths.go
			return
		}
		// Nothing in the policy looks at names or tells QUIC apart:
		// the flow is UDP like any other, and a broken client (or one
		// speaking something that only looks like QUIC) still works.
		f.rec.Kind = "udp"
		if d := f.decide(policy.ProtoUDP, ""); d.Action == policy.Deny {
			f.refuse("denied by policy")
			return
		}
		f.rec.Error = reason + "; relayed as udp"
		f.quic, f.quicUnread = nil, true
		f.relay(held, nil)
		return
	}
	f.rec.SNI, f.rec.ECH = hello.ServerName, hello.ECH
	setALPN(f.rec, hello.ALPN)
	if hello.ECH && f.pol.DenyECH() {
		// As for TLS: the SNI is only the cover name of a client-facing
		// server, so no rule, and no destination check, can say where
		// this goes.
		f.rec.Rule, f.rec.Policy = "", f.pol.ID() // the policy's ech: deny
		f.refuseNamed("ClientHello offers ECH; policy ech: deny")
		return
	}
	d := f.decide(policy.ProtoQUIC, hello.ServerName)
	switch d.Action {
	case policy.Deny:
		f.refuseNamed("denied by policy")
		return
	case policy.Bump:
		f.refuseNamed(quicBumpReason)
		return
	}
	held, deny, err := f.checkHolding(d, hello.ServerName, held)
	switch {
	case deny: // first: the flow was denied, whether or not its client stayed
		f.refuseNamed(f.rec.Error)
	case err != nil:
		f.clientLeft("the flow ended while its destination was checked", err)
	default:
		f.relay(held, nil)
	}
}

// clientLeft records a QUIC flow whose client's side closed, or failed
// (err, what its read said), before it was decided: no host socket was
// opened for it. why joins what the record says already (an audited
// destination mismatch).
func (f *udpFlow) clientLeft(why string, err error) {
	f.releaseShare()
	f.client.Close()
	if f.p.stacksClosing.Load() && stackEnded(err) {
		// The drain's close of the stacks ended the client's side, not
		// the client: said first, as every flow the drain cuts says it.
		// Not for a client whose port answered unreachable first (its
		// read said ECONNREFUSED), however soon after the drain's end
		// its record is written (review rev32a F3).
		why = errShutdown.Error() + ": " + why
	}
	f.rec.Result, f.rec.Error = "reset", joinError(f.rec.Error, why)
	f.p.finish(f.rec, f.start)
}

// refuseNamed is refuse for a flow refused on its ClientHello's name: its
// record comes from the client's bucket of such denials (denylimit.go), so
// that a client cannot keep the name out of the records by first spending
// its bucket of early denials on cheap ones. A connection refused at its
// Initial is not remembered for new paths (quicpaths.go): it reached no
// server, so no path of it can follow, and what its client sends there
// next without an Initial (WireGuard, TURN on 443 at an HTTPS front end's
// address) is its own udp flow.
func (f *udpFlow) refuseNamed(reason string) {
	f.releaseShare() // no host socket: it does not count
	f.p.denyNamed(f.rec, f.start, clientShareKey(f.info), reason)
	f.hold(f.pol)
}

// gateQUIC holds the client's datagrams, from first on, until they carry a
// complete ClientHello, or the gate's bounds are reached. It returns copies
// of the datagrams, in order, and gives firstBuf back to the pool.
func (f *udpFlow) gateQUIC(first []byte, firstBuf *[]byte) (held [][]byte, hello sniff.ClientHello, err error) {
	asm := new(quic.Assembler)
	f.quic = asm // relay lets later datagrams through only if they belong
	size := len(first)
	held = append(held, append([]byte(nil), first...))
	datagramBufPool.Put(firstBuf)
	if size > quicGateBytes {
		// Not read, so not held: a datagram may be reassembled from IP
		// fragments up to 64 KB.
		return held, hello, fmt.Errorf("a first datagram of %d bytes, over the gate's %d", size, quicGateBytes)
	}
	hello, done, err := asm.Add(held[0])
	if done || err != nil {
		return held, hello, err
	}
	next := f.gateReader()
	defer next.stop()
	deadline := time.Now().Add(quicGateWait)
	for {
		if len(held) >= quicGateDatagrams {
			return held, hello, fmt.Errorf("no complete ClientHello in %d datagrams", len(held))
		}
		d, rerr := next.read(deadline, quicGateBytes-size)
		if rerr != nil {
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				return held, hello, fmt.Errorf("no complete ClientHello within %s", quicGateWait)
			}
			return held, hello, fmt.Errorf("%w: %w", errClientGone, rerr)
		}
		if size += len(d); size > quicGateBytes {
			return held, hello, fmt.Errorf("no complete ClientHello in %d bytes", quicGateBytes)
		}
		held = append(held, d)
		if hello, done, err = asm.Add(d); done || err != nil {
			return held, hello, err
		}
	}
}
