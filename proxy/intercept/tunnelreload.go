package intercept

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A WebSocket tunnel is decided again, on the name of the request that
// opened it, when it next carries bytes after a reload, either way: it has
// no next request for the reload to reach, and without this a tunnel (a
// command channel, an exfiltration under way) to a name the operator has
// since denied would carry bytes for as long as either end kept it busy,
// as a relayed TCP connection would (proxy/tcpreload.go). A request's body
// under way (an upload that never ends, a gRPC stream) and its response's
// (a long download) are the same channel, and are decided again the same
// way (countingReader, recordingBody). The check costs one atomic load and
// a pointer compare per read or write.

// errTunnelReloadDenied ends a tunnel, or a request, a reload denies.
var errTunnelReloadDenied = errors.New("denied by a policy reload")

// tunnelReload is what a WebSocket tunnel, or a request under way, keeps
// to be decided again.
type tunnelReload struct {
	s    *session
	subj policy.Subject // the request's, with its name
	pol  atomic.Pointer[policy.Policy]
	// stream: the request is an HTTP/2 stream, which a deny ends alone
	// (its reader resets it, or answers it 403); else a deny ends the
	// session, since nothing may follow on an HTTP/1 connection whose
	// request was cut mid-body.
	stream bool
	// unsent: a reload denied the request before its head went upstream
	// (checkHead), or its answer's head to the client (checkAnswer), so
	// nothing was cut and its client is answered 403;
	// under mu.
	unsent bool

	mu sync.Mutex // both directions may find the reload at once
	// why says why a reload ended the tunnel; set once, under mu.
	why string
	decided
}

// decided is what a tunnelReload's decisions found, under its mu: a copy
// of it is what a cancelled one puts back (recheck).
type decided struct {
	// d is the decision that ended the tunnel, or the last made.
	d policy.Decision
	// destCheck is the tunnel's destination check ("ok", "mismatch", or ""
	// if none was made), and checkErr the error of one made here; vouch
	// what its pass rested on.
	destCheck, checkErr string
	vouch               destVouch
	// byName: d denies the connection's own name, not the request's
	// alone; nameByCheck: for the name's failed destination check. Its
	// 403 says so as refuseDeniedName's does (reloadDenyResponse).
	byName, nameByCheck bool
}

// init makes r the recheck of a request (and of the tunnel it may open)
// decided under pol, on subj, whose destination check rec records, a pass
// of it resting on v, and returns it; nil when the interceptor has no
// policy holder (no reload can happen). stream says the request is an
// HTTP/2 stream. In place: r is a part of the request's requestState, no
// allocation of its own.
func (r *tunnelReload) init(s *session, pol *policy.Policy, subj policy.Subject, rec *records.Record, v destVouch, stream bool) *tunnelReload {
	if s.ic.cfg.Policy == nil {
		return nil
	}
	r.s, r.subj, r.destCheck, r.vouch, r.stream = s, subj, rec.DestCheck, v, stream
	r.pol.Store(pol)
	return r
}

// check is the recheck, before a read's bytes go on or a write goes out:
// nil while the tunnel or request may go on (also for a nil r). One it
// ends on an HTTP/1 connection has both ends reset (the client's
// connection and the destination's); an HTTP/2 stream is its reader's to
// end.
func (r *tunnelReload) check() error { return r.recheck(context.Background(), false) }

// checkCtx is check, its lookups cancelled by ctx: one that ctx cancelled
// decides nothing (nil, and the next check decides again), for a waiting
// tunnel whose wait ended before its answer (reloadLook).
func (r *tunnelReload) checkCtx(ctx context.Context) error { return r.recheck(ctx, false) }

// due reports whether a check would decide the tunnel again: a policy
// other than the one it was last decided under is in force. One atomic
// load and a compare; false for a nil r.
func (r *tunnelReload) due() bool {
	if r == nil {
		return false
	}
	pol := r.s.ic.cfg.Policy.Load()
	return pol != nil && pol != r.pol.Load()
}

// checkHead is the recheck of a request whose head is about to go
// upstream, after whatever it waited for since it was decided (a dial, a
// slot among the session's upstream connections, a kept connection that
// ended under an Expect: 100-continue request, its destination check):
// without it, a reload that denied its name meanwhile still had its head,
// and its body up to the first read, go to that name. Nothing of it has
// gone, nor been answered, so a deny ends the request alone, on HTTP/1
// too: its client gets a 403 (roundTrip), its connection serving on
// unless the connection's own name is denied (denyResponse).
// nil for a nil r.
func (r *tunnelReload) checkHead() error { return r.recheck(context.Background(), true) }

// checkAnswer is the recheck of a request whose response head has come,
// before it goes to the client: a response with no body read to follow
// (an answer to HEAD, a 101 that opens a tunnel) met no other recheck, and
// went out whole after a reload that denied its name. Nothing of the
// answer has reached the client, so a deny ends the request alone, as
// checkHead's does: a 403, its connection serving on. nil for a nil r.
func (r *tunnelReload) checkAnswer() error { return r.recheck(context.Background(), true) }

// recheck is checkCtx, or checkHead (checkAnswer) for head.
func (r *tunnelReload) recheck(ctx context.Context, head bool) error {
	if r == nil {
		return nil
	}
	pol := r.s.ic.cfg.Policy.Load()
	if pol == nil || pol == r.pol.Load() {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.why != "" {
		return errTunnelReloadDenied
	}
	if pol == r.pol.Load() { // the other direction decided it meanwhile
		return nil
	}
	was := r.decided
	r.why = r.decide(ctx, pol)
	cancelled := ctx.Err() != nil
	if ctx.Done() != nil {
		// The connection's name decided under ctx too: kept or put back
		// as the tunnel's part is, on this one look at ctx.
		r.s.settleName(ctx, cancelled)
	}
	if cancelled {
		// Its waiter ended first: what it found ended nothing.
		r.decided, r.why = was, ""
		return nil
	}
	if r.why != "" {
		r.s.ic.denied.Add(1)
		if head {
			r.unsent = true
			return errTunnelReloadDenied
		}
		if r.stream {
			return errTunnelReloadDenied
		}
		// Ending the session resets the client and every connection to
		// the destination: the tunnel took the client's connection over,
		// or the request was cut mid-body and nothing may follow it, so
		// nothing else of the session is left to serve. The
		// connection's record (a bumped one's tls record) says denied by
		// the reload's rule and policy, as the tunnel's does (record).
		d := r.d
		r.s.abort(&abortReason{result: "denied", err: errors.New("ended by a policy reload: " + r.why), denied: &d})
		return errTunnelReloadDenied
	}
	r.pol.Store(pol)
	return nil
}

// decide decides the tunnel or request under pol as a new request on its
// name would be, destination check included (checkAfterReload), and the
// connection's own name as a new connection's (decideName): it returns why
// pol ends it, or "" if it goes on. A check never made, or whose pass
// rested on a DNS answer the reload forgot, is made here, in the direction
// that found the reload, for at most DestinationCheckTimeout. The
// tunnel's own check comes before the connection's, so that one that
// fails is its record's (dest_check), as a spliced connection's is.
func (r *tunnelReload) decide(ctx context.Context, pol *policy.Policy) string {
	d := pol.Decide(r.subj)
	r.d, r.byName, r.nameByCheck = d, false, false
	if d.Action == policy.Deny {
		// A request for the connection's own name denies the name: its
		// 403 closes the connection as the name's does (review r10s28 N1).
		r.byName = r.s.Hello != nil && sameName(r.subj.Domain, r.s.Hello.ServerName)
		if r.byName {
			// And the name decided so, for the tls record to say the
			// reload denied it (noteNameDenied); it said bump, ok,
			// under the old policy (review r4s29 F1). Settled with
			// the tunnel's decision (recheck).
			r.s.decideNameCtx(ctx, pol)
		}
		return "denied by policy"
	}
	if r.s.needsDestinationCheck(pol, d, r.subj.Domain) {
		if why := r.s.checkAfterReload(ctx, pol, r.subj.Domain, &r.destCheck, &r.checkErr, &r.vouch); why != "" {
			// Of the connection's own name (same name, same address),
			// it is the name's check that failed.
			r.byName = r.s.Hello != nil && sameName(r.subj.Domain, r.s.Hello.ServerName)
			r.nameByCheck = r.byName
			return why
		}
	}
	if r.s.Hello != nil {
		// The connection's own name, which its upstream connections
		// carry, and its ECH (connreload.go).
		if v := r.s.decideNameCtx(ctx, pol); v.why != "" {
			r.d, r.byName, r.nameByCheck = v.d, true, v.byCheck
			if v.byCheck {
				// The name's check failed: its error goes into the
				// record, and for a request for that name (same name,
				// same address) it is the request's own check, as for
				// a new request (refuseDeniedName), not "ok" next to
				// "fails the destination check" (review r6s27 F1).
				if sameName(r.subj.Domain, r.s.Hello.ServerName) {
					r.destCheck = v.destCheck
				}
				if v.checkErr != "" && !strings.Contains(r.checkErr, v.checkErr) {
					r.checkErr = joinErrors(r.checkErr, v.checkErr)
				}
			}
			return r.s.nameDeniedNote(v.why)
		}
	}
	return ""
}

// deniedUnsent reports whether a reload denied the request before its
// head went upstream (checkHead), or before its answer's head went to the
// client (checkAnswer): nothing of it was cut.
func (r *tunnelReload) deniedUnsent() bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unsent
}

// ended reports whether a reload ended the tunnel.
func (r *tunnelReload) ended() bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.why != ""
}

// record puts into rec, the upgrade request's record, what the reload did:
// the destination check it made, and, if it ended the tunnel, the deciding
// rule and policy, action deny and result denied. Called once the tunnel
// has ended.
func (r *tunnelReload) record(rec *records.Record) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rec.DestCheck = r.destCheck
	if r.checkErr != "" {
		rec.Error = joinErrors(rec.Error, r.checkErr)
	}
	if r.why == "" {
		return
	}
	rec.Rule, rec.Action, rec.Policy = r.d.Rule, policy.Deny.String(), r.d.Policy
	rec.Result, rec.Error = "denied", joinErrors(rec.Error, "ended by a policy reload: "+r.why)
}

// joinErrors appends msg to a record's error, keeping what was there.
func joinErrors(prev, msg string) string {
	if prev == "" {
		return msg
	}
	return prev + "; " + msg
}
