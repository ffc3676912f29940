package proxy

// A query still waiting for its answer when its flow ends was recorded as
// a timeout, whatever ended the flow: one the destination refused at once
// (its port unreachable, 0.2 ms in), one whose answer a reload's deny
// dropped, one the appliance's shutdown cut. Each now says what ended it
// (udpFlow.ending).

// dnsEnd is how the queries a DNS flow leaves waiting are recorded: their
// result and error, and, for a reload's deny, the rule and policy that
// denied the flow, which ended them (in place of those they were relayed
// under).
type dnsEnd struct {
	result, err string
	dec         *dnsDecision
}

// dnsTimedOut ends the queries of a flow that ended at its deadline: they
// waited for an answer as long as the flow would.
var dnsTimedOut = dnsEnd{result: "timeout"}

// close records the queries left without their own answer: one that got
// another (dnsearly.go) as answered by it, the others as e says; and gives
// their room back to the client's budget.
func (d *dnsLog) close(e dnsEnd) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.budget.give(len(d.pending))
	d.p.udp.dnsPending.release(d.client, d.budget)
	d.budget = nil
	for k, q := range d.pending {
		delete(d.pending, k)
		if q.early.n > 0 {
			// Answered, by an answer the client may have taken, under
			// the decision it was relayed under (dnsearly.go).
			d.write(q, dnsRCodeName(q.early.rcode), int64(q.early.in), "ok", q.early.note())
			continue
		}
		if e.dec != nil {
			q.dec = e.dec
		}
		d.write(q, "", 0, e.result, e.err)
	}
}
