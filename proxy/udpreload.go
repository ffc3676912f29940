package proxy

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// An allowed UDP or QUIC flow is decided again on its next datagram, from
// either side, after a reload: without that, a flow opened before an
// operator tightened the policy would go on for as long as its client, or
// its destination, keeps sending. The check costs one atomic load and a
// pointer compare per datagram.

// reloaded decides the flow again under pol, the policy in force since a
// reload, by what its first decision knew: its addresses, and for QUIC the
// ClientHello's name and whether it offered ECH. Still allowed, the flow
// goes on under pol (the record keeps the rule that opened it); denied, it
// ends, with a record saying why (and naming pol), and its client end is then held as a
// denied flow's. A QUIC flow the new decision lets through by its name
// meets the new policy's destination check (reloadDestCheck) without a
// lookup, since this runs on the packet path: one whose check passed goes
// on, one whose check failed ends under an enforcing policy, and so does
// one never checked (the old policy had the check off, or no rule on its
// name), whose client's next connection is checked. It reports whether
// the flow goes on. Under outMu.
func (f *udpFlow) reloaded(pol *policy.Policy) bool {
	s := f.subject()
	d, why := f.p.redecide(pol, &s, f.rec)
	if why == "" && f.mayBe != nil {
		if d, why = f.mayBeDenied(pol); why != "" {
			f.rec.SNI, f.rec.ECH = "", false // which of them it is, nothing can tell
		}
	}
	if why != "" {
		f.endDenied(pol, d, why)
		return false
	}
	f.vouch = s.vouch
	f.pol = pol
	if f.quic == nil && !f.quicUnread {
		f.guardInitials = pol.NamesMatter()
	}
	if f.dns != nil {
		f.dns.pol.Store(pol) // its answers vouch for names again
		f.dns.redecided(d)   // and its queries are recorded under d
	}
	return true
}

// endDenied ends the flow because pol, loaded by a reload, denies it (by
// the rule of d, if any): finish records it as denied, and holds its client
// end as a denied flow's under pol. A flow already ending for another
// reason keeps that reason.
func (f *udpFlow) endDenied(pol *policy.Policy, d policy.Decision, reason string) {
	f.endOnce.Do(func() {
		f.deniedBy, f.deniedWhy = pol, reason
		f.rec.Rule, f.rec.Action, f.rec.Policy = d.Rule, policy.Deny.String(), pol.ID()
		f.stopHost()
	})
}

// hostReloaded has the host loop decide the flow again after a reload,
// before it relays the destination's next datagram: without that, a
// destination that keeps sending to a silent client (a stream, a command
// channel) keeps the flow from idling, and it would go on for ever under
// the policy that opened it. It reports whether the flow goes on. Only
// serveHost calls it, outside RawConn.Read. It may wait for outMu: a
// client drain holds it only briefly, and waits for nothing in turn
// (ending the flow only wakes the host loop: stopHost).
func (f *udpFlow) hostReloaded() bool {
	pol := f.p.cfg.Policy.Load()
	if pol == f.hostPol {
		return true
	}
	f.outMu.Lock()
	defer f.outMu.Unlock()
	if pol != f.pol && !f.reloaded(pol) {
		return false
	}
	f.hostPol = f.pol // the client side may have decided under a newer one
	return true
}

// datagramWaiting reports whether a datagram waits on the host socket fd,
// leaving it there: it peeks at its first byte into buf (not empty). An
// error pending on the socket (an ICMP unreachable, say) is returned, and
// the peek takes it, as a read would.
func datagramWaiting(fd uintptr, buf []byte) (bool, error) {
	for {
		// Raw: MSG_DONTWAIT keeps it from blocking.
		_, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return true, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false, nil
		}
		return false, os.NewSyscallError("recvfrom", e)
	}
}
