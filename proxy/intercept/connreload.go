package intercept

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// The connection's own name after a reload.
//
// A bumped connection is decided on its ClientHello, its SNI among the
// rest, and each request on it on its Host, under the policy in force when
// the request comes. A reload that denied the SNI reached only the
// requests for that name: one for any other Host went on over the
// upstream connection made with the denied name, to that name's server
// (one that routes by SNI, or ignores Host), and a further upstream
// connection was dialled with the denied name in the appliance's own
// ClientHello (review r1bypass F1). So the connection is decided again
// too, on what its first decision knew (its addresses and port, its SNI,
// whether it offered ECH), once per policy: a request for another name is
// refused while the connection's name is denied, a request or tunnel
// under way is ended as a reload that denies its own name ends it
// (tunnelReload), and no upstream connection is dialled for it again
// (redialer). The connection itself stays bumped, as it was decided: its
// requests are what reach the destination.

// nameRecheck is a bumped session's decision of its own name under a
// policy other than the one that bumped it.
type nameRecheck struct {
	mu sync.Mutex
	nameDecision
	// undo is the state before the last decision, made under undoBy, a
	// context that may yet be cancelled: its caller cancelled after the
	// decision was kept puts it back (settleName). Nil when none, or once
	// settled, or once another caller took that decision as it stands.
	undo   *nameDecision
	undoBy context.Context
}

// nameDecision is a nameRecheck's state, under its mu: a copy of it is
// what a cancelled decision puts back (decideNameCtx).
type nameDecision struct {
	pol *policy.Policy // the policy d and why are under; nil before any
	d   policy.Decision
	why string // why pol denies the connection's name, "" if it does not
	// destCheck is the connection's destination check as it stands
	// ("ok", "mismatch", "" if none was made): the bump's, then one made
	// here; checkErr the error of one made here; vouch what its pass
	// rested on (the bump's set by checkBumpDestination).
	destCheck, checkErr string
	vouch               destVouch
	seeded              bool // destCheck has the bump's
	byCheck             bool // why is the destination check's
	// checkDeniedBy is the ID of the last policy that denied the name
	// for its destination check (refusing its requests while in force),
	// "" if none did: a later one may allow the name again.
	checkDeniedBy string
}

// nameVerdict is the connection's own name decided under a policy: the
// decision and why it denies the connection ("" if it does not), and, when
// why is the destination check's (byCheck), that check as it stands and the
// error of one made here ("" if it failed before the reload, at the bump),
// read in the one critical section that decided, so that a request does
// not take another policy's check as its own.
type nameVerdict struct {
	d                   policy.Decision
	why                 string
	destCheck, checkErr string
	byCheck             bool
}

// decideName decides the session's own name (its ClientHello's) under
// pol as a new connection's would be, destination check included
// (checkAfterReload), once per policy: it returns pol's decision, why pol
// denies the connection ("" if it does not; always under the policy that
// bumped it), and the check that denied. A check never made, or whose
// pass rested on a DNS answer the reload forgot, is made here, for at
// most DestinationCheckTimeout, the session's other requests waiting
// meanwhile.
func (s *session) decideName(pol *policy.Policy) nameVerdict {
	return s.decideNameCtx(context.Background(), pol)
}

// decideNameCtx is decideName, its check cancelled by ctx: a decision
// that ctx cancelled is not kept (the next asks again), and the verdict
// returned then is no answer (its caller, which cancelled, drops it). A
// caller whose ctx may be cancelled settles the decision (settleName)
// once it has seen ctx itself.
func (s *session) decideNameCtx(ctx context.Context, pol *policy.Policy) nameVerdict {
	v, _ := s.decideNameAs(ctx, pol, false)
	return v
}

// decideNameOutright is decideName for a request its own rule denied,
// whose 403 is certain: the name is decided only if that needs no
// destination check (pol denies it, or its ECH; allows it with none to
// make; or decided it already), and no other request is deciding it now,
// else nothing is, and ok is false. A check takes up to
// DestinationCheckTimeout, the session's other requests waiting
// meanwhile, to confirm an answer already given, and one under way holds
// the name's lock for as long: an HTTP/2 stream's 403 waited for another
// stream's check (review rev30a F2). The name is left to the next request
// that needs it (refuseDeniedName), or to the one deciding it.
func (s *session) decideNameOutright(pol *policy.Policy) (v nameVerdict, ok bool) {
	return s.decideNameAs(context.Background(), pol, true)
}

// decideNameAs is decideNameCtx, and decideNameOutright when outright.
func (s *session) decideNameAs(ctx context.Context, pol *policy.Policy, outright bool) (nameVerdict, bool) {
	if pol == nil || pol == s.Policy || s.Hello == nil {
		return nameVerdict{d: s.Decision}, true
	}
	c := &s.nameCheck
	if !outright {
		c.mu.Lock()
	} else if !c.mu.TryLock() {
		return nameVerdict{}, false // being decided, perhaps by a check
	}
	defer c.mu.Unlock()
	if pol != c.pol {
		d := pol.Decide(s.Subject)
		check := s.nameNeedsCheck(pol, d)
		if outright && check {
			return nameVerdict{}, false
		}
		was := c.nameDecision
		c.undo, c.undoBy = nil, nil
		if s.decideNameLocked(ctx, pol, d, check); ctx.Err() != nil {
			c.nameDecision = was
		} else if ctx.Done() != nil {
			c.undo, c.undoBy = &was, ctx
		}
	} else if c.undoBy != ctx {
		// Another caller takes the decision as it stands (a request
		// refused by it): it stands.
		c.undo, c.undoBy = nil, nil
	}
	v := nameVerdict{d: c.d, why: c.why, byCheck: c.byCheck}
	if c.byCheck {
		v.destCheck, v.checkErr = c.destCheck, c.checkErr
	}
	return v, true
}

// settleName settles the name's decision made under ctx, if it was kept
// and not taken by another caller since (decideNameCtx): put back when
// cancelled, ctx cancelled after it was kept, so that a cancelled check
// decides nothing, the connection's name included. The tunnel it was made
// for went on, and the name kept denied made its tls record say "ended by
// a policy reload" while nothing was (review r4s28 F3).
func (s *session) settleName(ctx context.Context, cancelled bool) {
	if s.Hello == nil {
		return
	}
	c := &s.nameCheck
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.undoBy != ctx || c.undo == nil {
		return
	}
	if cancelled {
		c.nameDecision = *c.undo
	}
	c.undo, c.undoBy = nil, nil
}

// decideNameLocked decides the connection's name under pol, a policy not
// decided on yet, whose decision on the connection's subject is d, check
// whether that makes a destination check (nameNeedsCheck); c.mu held.
func (s *session) decideNameLocked(ctx context.Context, pol *policy.Policy, d policy.Decision, check bool) {
	c := &s.nameCheck
	if !c.seeded {
		c.destCheck, c.seeded = s.Record.DestCheck, true
	}
	c.pol, c.d, c.why, c.byCheck = pol, d, "", false
	sni := s.Hello.ServerName
	switch {
	case s.Hello.ECH && pol.DenyECH():
		c.d = policy.Decision{Action: policy.Deny, Policy: pol.ID()}
		c.why = "its ClientHello offers ECH; policy ech: deny"
	case c.d.Action == policy.Deny:
		c.why = "denied by policy"
	case check:
		c.why = s.checkAfterReload(ctx, pol, sni, &c.destCheck, &c.checkErr, &c.vouch)
		if c.byCheck = c.why != ""; c.byCheck {
			c.checkDeniedBy = pol.ID()
		}
	}
}

// nameNeedsCheck reports whether deciding the connection's name under pol,
// whose decision on the connection's subject is d, makes a destination
// check (decideNameLocked): neither ECH nor d denies it, and nothing
// proved the name at this address.
func (s *session) nameNeedsCheck(pol *policy.Policy, d policy.Decision) bool {
	sni := s.Hello.ServerName
	return !(s.Hello.ECH && pol.DenyECH()) && d.Action != policy.Deny &&
		s.needsDestinationCheck(pol, d, sni) && !s.ic.proven.has(newProvenOrigin(s.Subject.Dest, sni))
}

// errNameDenied fails the dial of a further upstream connection for a
// connection whose name the policy in force denies (redialer): a
// *nameDeniedError is.
var errNameDenied = errors.New("not dialled again")

// nameDeniedError is errNameDenied with the verdict that refused the dial
// (v, of the policy in force then), which the refused request's record
// gives (refuseRedial): its rule and policy, and the name's check that
// failed, as a request refused before its dial records them
// (refuseDeniedName); read again after, it could be another policy's.
type nameDeniedError struct {
	v    nameVerdict
	note string // nameDeniedNote's
}

func (e *nameDeniedError) Error() string { return errNameDenied.Error() + ": " + e.note }
func (e *nameDeniedError) Unwrap() error { return errNameDenied }

// dialDenied returns the error that fails a dial for the connection's
// name, denied by the policy in force, nil if it is not.
func (s *session) dialDenied() error {
	v := s.decideName(s.requestPolicy())
	if v.why == "" {
		return nil
	}
	return &nameDeniedError{v: v, note: s.nameDeniedNote(v.why)}
}

// nameDeniedNote says, for a record, that a reload denied the connection's
// name, and why.
func (s *session) nameDeniedNote(why string) string {
	return fmt.Sprintf("the connection's name (SNI %q) is no longer allowed, after a policy reload: %s", s.Hello.ServerName, why)
}

// noteNameDenied makes the tls record of a connection that ended while
// the policy in force denied its own name (its requests refused for it
// since) say so, as the end of a tunnel a reload denied does: the
// denying rule and policy, action deny, result denied, and why. Only one
// that ended cleanly (a reset, a stall, the client's going say their
// own: it runs after them), and only under the policy in force at its
// end (a reload may have allowed the name again; one of the same file,
// the same ID, decides the same). A name an enforcing policy denied for
// its destination check, which that end does not give, is said too, with
// that policy.
func (s *session) noteNameDenied() {
	c := &s.nameCheck
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checkErr != "" && s.Record.Kind == "tls" {
		// A check of the name made again after a reload failed (it
		// passed on an answer the reload forgot): the record's
		// dest_check is that one's, with why, not "ok" next to an error
		// saying the check failed (review r3s27 F2); and so under an
		// auditing policy that let the connection go on too, as an
		// audited tunnel's record says it: an audit that read "ok"
		// would hide what enforcing would cut (review r3s27 F3).
		s.Record.DestCheck = c.destCheck
		if !strings.Contains(s.Record.Error, c.checkErr) {
			s.Record.Error = joinErrors(s.Record.Error, c.checkErr)
		}
	}
	if c.why != "" && s.Record.Kind == "tls" && s.Record.Result == "ok" && c.pol.ID() == s.requestPolicy().ID() {
		s.Record.Rule, s.Record.Action, s.Record.Policy = c.d.Rule, "deny", c.d.Policy
		s.Record.Result = "denied"
		s.Record.Error = joinErrors(s.Record.Error, "ended by a policy reload: "+s.nameDeniedNote(c.why))
		if c.byCheck {
			return // the denial it gives is the check's
		}
	}
	if c.checkDeniedBy != "" && s.Record.Kind == "tls" {
		// The check denied the name under an enforcing policy that a
		// later one (allowing the name again, or ended otherwise)
		// does not give: else its dest_check mismatch next to the
		// bump's policy and result ok reads as an audit's, which it
		// was not (review r6s27 F2).
		s.Record.Error = joinErrors(s.Record.Error, fmt.Sprintf(
			"the connection's name was denied after a policy reload, for its destination check, by policy %s, which refused or ended its requests while in force", c.checkDeniedBy))
	}
}

// refuseDeniedName refuses req, decided on its Host under pol, when pol
// denies the connection's own name: its record (rec, begun) takes that
// decision's rule and says why, and the client gets a 403; an HTTP/1
// connection is closed after it, since every request it could carry now
// would be refused alike (nameDenyResponse). nil when the connection's
// name is allowed. A request for the connection's own name meets it too:
// its decision on the Host knows nothing of the ClientHello's ECH.
func (rt *roundTripper) refuseDeniedName(req *http.Request, rec *records.Record, pol *policy.Policy, host string, start time.Time) *http.Response {
	s := rt.s
	if s.Hello == nil {
		return nil
	}
	v := s.decideName(pol)
	if v.why == "" {
		return nil
	}
	note := recordNameDenial(rec, v, host, s.Hello.ServerName, s.nameDeniedNote(v.why))
	rt.writeDeny(rec, start)
	return nameDenyResponse(req, v, s.Hello.ServerName, note)
}

// nameDenyResponse is the 403 that refuses req for the connection's name
// (sni), denied by v, its body saying note. An HTTP/1 connection is closed
// after it. An HTTP/2 one refused for its name's failed check is sent a
// GOAWAY (x/net's server takes "Connection: close" so), its streams under
// way finishing: the check is not made again on it, and it answered 403
// to every request for as long as its client kept it, the failure maybe a
// passing one (a lookup error, the lookups' quota spent by another client
// during the reload), while a new connection is checked afresh (review
// r8s27 F1); a request refused at its redial too (review r4s28 F2). A
// name the policy denies is refused on a new connection as well: no need.
func nameDenyResponse(req *http.Request, v nameVerdict, sni, note string) *http.Response {
	return closeForName(req, denyResponse(req, v.d.Rule, sni, note), v)
}

// closeForName makes resp, a 403 to req refusing the connection's name
// (denied by v), end the connection as nameDenyResponse says: an HTTP/1
// one closed after it, an HTTP/2 one refused for the name's failed check
// sent a GOAWAY.
func closeForName(req *http.Request, resp *http.Response, v nameVerdict) *http.Response {
	resp.Close = !inH2Handler(req)
	if v.byCheck && !resp.Close {
		resp.Header.Set("Connection", "close")
	}
	return resp
}

// ownDenyResponse is the 403 of req, for host, that d, pol's decision on
// its Host, denies. A request for the connection's own name denied by a
// policy other than the one that bumped it denies the name too (same
// name, same connection): the name is decided as denied (decideName), so
// that the tls record says the reload denied it (noteNameDenied), and the
// 403 ends the connection as the name's does (closeForName). Answered as
// a request's own deny alone, its HTTP/1 connection was kept, every later
// request on it refused alike, and the tls record said bump, ok, under the
// old rule and policy, while a request for another Host had all that
// (review r4s29 F1). A request for another Host is refused by its own
// rule first, and the name was left undecided: its HTTP/1 connection kept
// and the tls record as it was until a request the rules allow came. So
// its name is decided too, when that needs no destination check
// (decideNameOutright), and a name denied closes the connection alike.
// Its record keeps its own deny: its own rule, its own reason.
func (rt *roundTripper) ownDenyResponse(req *http.Request, d policy.Decision, pol *policy.Policy, host string) *http.Response {
	resp := denyResponse(req, d.Rule, host, "")
	s := rt.s
	if s.Hello == nil {
		return resp
	}
	var v nameVerdict
	if sameName(host, s.Hello.ServerName) {
		v = s.decideName(pol)
	} else {
		v, _ = s.decideNameOutright(pol) // one that needs a check stays undecided
	}
	if v.why != "" {
		return closeForName(req, resp, v)
	}
	return resp
}

// denyResponse is the 403 of a request r ended (roundTrip), for host.
// One ended for the connection's own name is refused as refuseDeniedName
// refuses one (nameDenyResponse): its HTTP/1 connection closed, an HTTP/2
// one refused for the name's failed check sent a GOAWAY. Answered as a
// request's own deny, the client kept the connection, and its next
// request was refused for the name before it was told to go (review
// r8s28 F1).
func (r *tunnelReload) denyResponse(req *http.Request, host string) *http.Response {
	r.mu.Lock()
	v, byName := nameVerdict{d: r.d, byCheck: r.nameByCheck}, r.byName
	r.mu.Unlock()
	if byName {
		return nameDenyResponse(req, v, r.s.Hello.ServerName, "ended by a policy reload: the connection's name is denied")
	}
	return denyResponse(req, v.d.Rule, host, "ended by a policy reload")
}

// recordNameDenial puts into rec, the record of a request for host
// refused for the connection's name (sni) by v, that refusal: v's rule
// and policy, action deny, result denied, status 403, and why (the
// record's error). It returns what the 403's body says.
func recordNameDenial(rec *records.Record, v nameVerdict, host, sni, why string) (note string) {
	rec.Status, rec.Rule, rec.Policy = http.StatusForbidden, v.d.Rule, v.d.Policy
	rec.Action, rec.Result, rec.Error = "deny", "denied", why
	note = "the connection's name is denied"
	if v.byCheck {
		if sameName(host, sni) {
			// The request's own check would be this one, of the same
			// name and address: its record gives it as a failed check
			// of the request's Host (review r3s27 F2).
			rec.DestCheck, note = v.destCheck, "the destination address is not one this name resolves to"
			if v.checkErr != "" {
				rec.Error = v.checkErr
			}
		} else if v.checkErr != "" {
			rec.Error = joinErrors(rec.Error, v.checkErr)
		}
	}
	return note
}

// sameName reports whether host, a request's, is the connection's name
// sni as the policy and the destination check take a name: case aside,
// one trailing dot dropped. A Host "www.example.test." is that name, and
// a failed check of the name is its own; compared as written, its record
// said dest_check ok next to "fails the destination check" (review r4s28
// F1).
func sameName(host, sni string) bool {
	return strings.EqualFold(strings.TrimSuffix(host, "."), strings.TrimSuffix(sni, "."))
}

// refuseRedial answers req, for host, as a denial when its upstream
// connection was not dialled again for the connection's name (err, the
// round trip's, is a *nameDeniedError): a request decided before the
// reload, waiting for its dial. Its record is what the verdict that
// refused the dial makes it, and so is its 403 (an HTTP/2 connection
// refused for its name's failed check sent a GOAWAY), as refuseDeniedName's
// (reviews r8s27, r4s28 F2). nil for any other err.
func (rt *roundTripper) refuseRedial(req *http.Request, rec *records.Record, host string, err error, start time.Time) *http.Response {
	denied, ok := errors.AsType[*nameDeniedError](err)
	if !ok {
		return nil
	}
	note := recordNameDenial(rec, denied.v, host, rt.s.Hello.ServerName, err.Error())
	rt.writeDeny(rec, start)
	return nameDenyResponse(req, denied.v, rt.s.Hello.ServerName, note)
}

// requestPolicy returns the policy a request arriving now is decided by:
// the one in force (one atomic load), else the connection's.
func (s *session) requestPolicy() *policy.Policy {
	if h := s.ic.cfg.Policy; h != nil {
		if p := h.Load(); p != nil {
			return p
		}
	}
	return s.Policy
}
