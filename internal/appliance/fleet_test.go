package appliance

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// TestFleet runs three real appliances behind gwlbsim as a GWLB target
// group, the way an Auto Scaling group runs them, with real curl clients:
//
//	client ns                       app ns                                srv ns
//	curl ─▶ tun0 ─▶ gwlbsim ═veth═▶ gwlbproxy a 198.18.1.11 ┐             HTTP :80
//	        198.18.50.2   198.18.1.2 gwlbproxy b 198.18.1.12 ├ 198.18.2.1 ═veth═ 198.18.2.3
//	                                 gwlbproxy c 198.18.1.13 ┘
//	                                 Secrets Manager and CloudWatch Logs test
//	                                 endpoints on the app ns's loopback
//
// The simulator health-checks each appliance's admin port and spreads new
// flows over the healthy ones by their 5-tuple. The appliances share one
// CA (a Secrets Manager secret) and one log group, a stream each.
//
// In order, on the same fleet: traffic spreads over all three and each
// record arrives once, from the appliance that carried the flow; every
// appliance serves the same CA; a flow rebalanced mid-connection gets a
// RST from its new appliance and the client's retry succeeds; one
// appliance is killed (SIGKILL), new flows succeed on the others once the
// simulator finds it unhealthy, and it loses at most what its CloudWatch
// buffer held; one is taken out as an Auto Scaling group does
// (deregistration, the deregistration delay, then SIGTERM): its download in
// progress completes within the delay, new flows go elsewhere, its health
// check fails at the SIGTERM, it exits within the drain and loses no record.
func TestFleet(t *testing.T) {
	requireNetns(t)
	start := time.Now()
	f := newFleet(t)
	// The appliances' roles: a is rebalanced away from and, at the end,
	// drained; b is killed; c carries on.
	const drained, killed, survivor = 0, 1, 2

	steps := []struct {
		name string
		fn   func(*testing.T, *fleet)
	}{
		{"Spread", fleetSpread},
		{"SameCA", fleetSameCA},
		{"Rebalance", func(t *testing.T, f *fleet) { fleetRebalance(t, f, drained) }},
		{"Kill", func(t *testing.T, f *fleet) { fleetKill(t, f, killed) }},
		{"Drain", func(t *testing.T, f *fleet) { fleetDrainStep(t, f, drained, survivor) }},
		{"Records", fleetRecords},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, f) }) {
			t.Fatalf("%s failed; the later steps build on it", s.name)
		}
	}

	// The simulator's verdict on every reply: from the flow's appliance,
	// under the flow's header, or refused and counted.
	st := f.stopSim(t)
	flows := make([]string, 0, len(st.Targets))
	for _, ts := range st.Targets {
		flows = append(flows, fmt.Sprintf("%s %s: %d flows (%d rebalanced in, %d out), %d packets, %d replies",
			ts.Addr.Addr(), ts.State, ts.FlowsTotal, ts.RebalancedIn, ts.RebalancedOut, ts.Packets, ts.Replies))
	}
	t.Logf("gwlbsim: sent %d, received %d, refused from the wrong target %d, rebalanced %d, dropped %d; per target:\n  %s",
		st.Sent, st.Received, st.WrongTarget, st.Rebalanced, st.FlowDropped, strings.Join(flows, "\n  "))
	if st.Received == 0 || st.HeaderMismatch != 0 || st.UnknownEndpoint != 0 || st.Malformed != 0 || st.WrongPort != 0 ||
		st.TUN.SendErrors != 0 || st.TUN.WriteErrors != 0 {
		t.Errorf("gwlbsim stats %+v: want no reply under a wrong header, nothing malformed, no pump error", st)
	}
	if st.WrongTarget == 0 {
		t.Errorf("gwlbsim refused no reply from the wrong target: the rebalanced flow's old appliance kept sending, and should have been refused")
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// fleetSpread: 30 requests from distinct source ports reach every
// appliance, and each has its record, once, in the stream of the
// appliance that carried it.
func fleetSpread(t *testing.T, f *fleet) {
	ports := make([]uint16, 30)
	for i := range ports {
		ports[i] = f.port()
	}
	began := time.Now()
	for _, r := range f.curlAll(ports, hello) {
		if r.code != 0 || r.status != 200 || !strings.HasPrefix(r.body, "hello from srv; you are "+netnsAppSrvAddr+":") {
			t.Errorf("GET /hello through the fleet: %s", r)
		}
	}
	took := time.Since(began)
	carried := f.note(t, ports, func(uint16) bool { return true })
	per := make([]int, fleetSize)
	for p, i := range carried {
		if i < 0 {
			t.Fatalf("the simulator has no flow from port %d", p)
		}
		per[i]++
	}
	t.Logf("30 flows in %s; flows per appliance: %s", took.Round(time.Millisecond), f.perApp(per))
	for i, n := range per {
		if n == 0 {
			t.Errorf("appliance %s carried none of the 30 flows: the simulator did not spread them", f.apps[i].name)
		}
	}

	recs := make([]int, fleetSize)
	for i, a := range f.apps {
		var mine []uint16
		for _, p := range ports {
			if carried[p] == i {
				mine = append(mine, p)
			}
		}
		if missing := f.waitRecords(t, a, mine); len(missing) > 0 {
			t.Errorf("stream %s lacks the records of ports %v, which appliance %s carried", a.stream, missing, a.name)
		}
	}
	for i, a := range f.apps {
		got := f.recordPorts(t, a)
		for _, p := range ports {
			want := 0
			if carried[p] == i {
				want = 1
			}
			if got[p] != want {
				t.Errorf("stream %s has %d records of port %d, want %d (carried by %s)", a.stream, got[p], p, want, f.apps[carried[p]].name)
			}
			recs[i] += got[p]
		}
		for _, r := range f.streamRecords(t, a) {
			if r.Kind != "http" || r.Path != "/hello" || r.Status != 200 || r.Endpoint != netnsEndpoint || r.DestIP != netnsSrvAddr {
				t.Errorf("stream %s: record %+v: want GET /hello, 200, through %s", a.stream, r, netnsEndpoint)
			}
		}
	}
	t.Logf("records per stream: %s", f.perStream(recs))
}

// fleetSameCA: the trust page, fetched through each appliance in turn,
// serves the one CA kept in Secrets Manager.
func fleetSameCA(t *testing.T, f *fleet) {
	b, _ := pem.Decode(f.caPEM)
	want := must(x509.ParseCertificate(b.Bytes))(t)
	for i, a := range f.apps {
		p := f.portTo(t, i, netnsSrvAddr+":80")
		r := f.curl(p, "--resolve", certs.DefaultTrustHost+":80:"+netnsSrvAddr, "http://"+certs.DefaultTrustHost+"/ca.pem")
		if r.code != 0 || r.status != 200 {
			t.Fatalf("the trust page's ca.pem through appliance %s: %s", a.name, r)
		}
		if got := f.note(t, []uint16{p}, func(uint16) bool { return true })[p]; got != i {
			t.Fatalf("the flow routed to appliance %s went to %d", a.name, got)
		}
		cb, _ := pem.Decode([]byte(r.body))
		if cb == nil {
			t.Fatalf("appliance %s's trust page served no PEM: %q", a.name, r.body)
		}
		got := must(x509.ParseCertificate(cb.Bytes))(t)
		if !got.Equal(want) {
			t.Errorf("appliance %s serves CA %q (serial %s), want the secret's %q (serial %s)",
				a.name, got.Subject, got.SerialNumber, want.Subject, want.SerialNumber)
		}
	}
	t.Logf("every appliance's trust page serves the secret's CA %q, SHA-256 %s", want.Subject.CommonName, opensslFingerprint(want.Raw))
}

// fleetRebalance: with target failover rebalance (on_deregistration and,
// as the GWLB requires the two to match, on_unhealthy), a flow whose appliance
// is deregistered moves, after the delay, to another one under a new
// cookie; the client's next segment (a keepalive) gets a RST from there,
// so the client fails at once instead of hanging, and its retry succeeds.
// The old appliance's record of the flow arrives at its drain (Drain).
func fleetRebalance(t *testing.T, f *fleet, from int) {
	x := f.apps[from]
	const delay = time.Second
	f.simPost(t, "/attributes?on_deregistration=rebalance&on_unhealthy=rebalance&deregistration_delay="+delay.String())
	p := f.portTo(t, from, netnsSrvAddr+":80")
	// 60 lines 250 ms apart: 15 s of download, unless it is cut.
	dl := f.startSlow(t, p, 60, 250, "--keepalive-time", "1")
	f.note(t, []uint16{p}, func(uint16) bool { return true })
	before := f.flowCookie(t, p)
	deregAt := time.Now()
	f.simPost(t, "/deregister?target="+x.addr)
	err, rest, ended := dl.wait(12 * time.Second)
	if !ended {
		t.Fatalf("the flow moved off appliance %s hung: no RST from its new appliance within 12s", x.name)
	}
	cut := dl.at.Sub(deregAt)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 56 {
		t.Errorf("curl of the moved flow: %v (%s), want exit 56 (connection reset)", err, strings.TrimSpace(dl.errb.String()))
	}
	f.rebalanced = p
	fl := f.flowInfo(t, p)
	to := f.appIndex(fl.Target)
	if to < 0 || to == from || fl.Moves != 1 || fl.Cookie == before {
		t.Errorf("flow after the deregistration delay: %+v (cookie before %s): want it moved once, to another appliance, under a new cookie", fl, before)
	}
	t.Logf("rebalance: the flow from port %d moved from %s to %s (cookie %s → %s) %s after deregistration; curl got a RST %s after it (%d more lines), %s",
		p, x.name, f.name(to), before, fl.Cookie, delay, cut.Round(time.Millisecond), len(rest), strings.TrimSpace(dl.errb.String()))

	rp := f.port()
	r := f.curl(rp, hello(rp)...)
	if r.code != 0 || r.status != 200 {
		t.Errorf("the client's retry: %s", r)
	}
	if got := f.note(t, []uint16{rp}, func(uint16) bool { return r.code == 0 })[rp]; got == from || got < 0 {
		t.Errorf("the retry went to %d, not to a registered appliance", got)
	}

	// The fleet as it was: the default failover, and a registered again.
	f.simPost(t, "/attributes?on_deregistration=no_rebalance&on_unhealthy=no_rebalance&deregistration_delay="+fleetDeregDelay.String())
	f.waitTargets(t, "the deregistration to complete", func(ts map[string]gwlbsim.TargetStats) bool {
		return ts[x.addr].State == gwlbsim.StateUnused
	})
	f.simPost(t, "/register?target="+x.addr)
	f.waitTargets(t, "appliance "+x.name+" healthy again", func(ts map[string]gwlbsim.TargetStats) bool {
		return ts[x.addr].State == gwlbsim.StateHealthy
	})
}

// fleetKill: SIGKILL one appliance. Until the simulator finds it unhealthy
// new flows hashed to it fail; then every new flow succeeds on the others.
// What it had not shipped to CloudWatch is lost, and no more than its
// buffer held.
func fleetKill(t *testing.T, f *fleet, victim int) {
	k := f.apps[victim]
	// Client ports whose new flows go to the victim while it is healthy:
	// after the kill they fail until the simulator takes it out of
	// service, and then go to the others.
	toVictim := f.portsTo(t, victim, 24, netnsSrvAddr+":80")
	// A burst on the victim, right before the kill, so that its buffer
	// likely still holds some of their records.
	ports := append(f.portsTo(t, victim, 2, netnsSrvAddr+":80"), f.port(), f.port())
	for _, r := range f.curlAll(ports, hello) {
		if r.code != 0 || r.status != 200 {
			t.Fatalf("GET /hello before the kill: %s", r)
		}
	}
	f.note(t, ports, func(uint16) bool { return true })
	owed := f.portsOf(victim)
	// Every record made and handed to the shipper, then the kill.
	var received uint64
	var queued int
	deadline := time.Now().Add(10 * time.Second)
	for {
		cw := f.appStats(t, k).CloudWatch
		if cw == nil {
			t.Fatalf("appliance %s's /stats has no cloudwatch section", k.name)
		}
		received, queued = cw.Received, cw.QueuedRecords
		if received >= uint64(len(owed)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("appliance %s's shipper received %d records, want the %d of the flows it carried", k.name, received, len(owed))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := k.proc.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killAt := time.Now()
	if code := k.proc.wait(5 * time.Second); code == 0 {
		t.Fatalf("appliance %s exited 0 after SIGKILL", k.name)
	}

	// A round of new flows every 100 ms for 2.4 s, each from a port that
	// hashed to the victim and from a fresh one. Those whose first packet
	// reaches the simulator before it finds the victim unhealthy go to the
	// dead appliance and fail; after, they go to the others and succeed.
	var res []fleetCurl
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range toVictim {
		ps := []uint16{toVictim[i], f.port()}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := f.curlAll(ps, func(uint16) []string {
				return []string{"--connect-timeout", "1", "--max-time", "2", "http://" + netnsSrvAddr + "/hello"}
			})
			mu.Lock()
			res = append(res, r...)
			mu.Unlock()
		}()
		time.Sleep(time.Until(killAt.Add(time.Duration(i+1) * 100 * time.Millisecond)))
	}
	wg.Wait()
	var ps []uint16
	ok := map[uint16]bool{}
	for _, c := range res {
		ps = append(ps, c.port)
		ok[c.port] = c.code == 0 && c.status == 200
	}
	carried := f.note(t, ps, func(p uint16) bool { return ok[p] })
	failed := 0
	for _, c := range res {
		switch p := c.port; {
		case ok[p] && carried[p] == victim:
			t.Errorf("a flow on the killed appliance succeeded: %s", c)
		case !ok[p] && carried[p] != victim:
			t.Errorf("a new flow on live appliance %s failed: %s", f.name(carried[p]), c)
		case !ok[p]:
			failed++
		}
	}
	// When the flows began, as the simulator saw their first packet: the
	// time new flows succeed from is the start of the first flow from a
	// port that hashed to the victim after which no such flow failed.
	var flows []gwlbsim.FlowInfo
	f.simGet(t, "/flows", &flows)
	created := map[uint16]time.Time{}
	for _, fl := range flows {
		if fl.Proto == "tcp" && fl.Src.Addr().String() == netnsClientAddr {
			created[fl.Src.Port()] = fl.Created
		}
	}
	hashedToVictim := append([]uint16(nil), toVictim...)
	sort.Slice(hashedToVictim, func(a, b int) bool { return created[hashedToVictim[a]].Before(created[hashedToVictim[b]]) })
	first := -1
	for i, p := range hashedToVictim {
		switch {
		case created[p].IsZero():
			t.Fatalf("the simulator has no flow from port %d", p)
		case !ok[p]:
			first = -1
		case first < 0:
			first = i
		}
	}
	if first < 0 || first > len(hashedToVictim)-5 {
		t.Fatalf("new flows still failing 2.4s after the kill; targets %+v", f.targets(t))
	}
	recovered := created[hashedToVictim[first]].Sub(killAt)
	ts := f.targets(t)[k.addr]
	if ts.State != gwlbsim.StateUnhealthy {
		t.Errorf("the killed appliance is %s in the simulator, want unhealthy", ts.State)
	}
	detected := ts.LastChange.Sub(killAt)
	t.Logf("kill: %s SIGKILLed; the simulator found it unhealthy %s later (checks every %s, unhealthy after %d); "+
		"new flows that hashed to it succeed on the others from %s after the kill on; %d new flows failed before (they went to the dead one)",
		k.name, detected.Round(time.Millisecond), fleetInterval, fleetUnhealthyN, recovered.Round(time.Millisecond), failed)
	if failed == 0 {
		t.Errorf("no new flow failed after the kill: the flows hashed to the dead appliance should have, until it was found unhealthy")
	}
	if limit := time.Duration(fleetUnhealthyN+1)*fleetInterval + time.Second; recovered > limit {
		t.Errorf("new flows took %s to succeed after the kill, want within %s", recovered, limit)
	}

	// The loss: records it made but never shipped, no more than its
	// buffer held. A request under way at the kill may still land.
	time.Sleep(500 * time.Millisecond)
	got := f.recordPorts(t, k)
	var lost []uint16
	for _, p := range owed {
		switch got[p] {
		case 0:
			lost = append(lost, p)
		case 1:
		default:
			t.Errorf("stream %s has %d records of port %d", k.stream, got[p], p)
		}
	}
	t.Logf("kill: %s had made %d records; %d reached its stream, %d were lost; its CloudWatch buffer held %d at the kill",
		k.name, received, len(owed)-len(lost), len(lost), queued)
	if len(lost) > queued {
		t.Errorf("appliance %s lost %d records (ports %v), more than the %d its buffer held", k.name, len(lost), lost, queued)
	}
	f.mu.Lock()
	for _, p := range lost {
		f.wantRecord[p] = false
	}
	f.mu.Unlock()
}

// fleetDrainStep: take one appliance out as an Auto Scaling group does:
// deregister it, wait the deregistration delay (the template makes it
// --drain-timeout), and only then SIGTERM it (terminating the instance).
// While the target drains, the appliance does not know: its health check
// still answers 200 and its download in progress completes, while new
// flows go elsewhere. Once the delay is over the SIGTERM fails its health
// check at once; it exits within the drain, and every record it owed is in
// its stream.
func fleetDrainStep(t *testing.T, f *fleet, victim, survivor int) {
	x := f.apps[victim]
	// The template's deregistration delay is the drain timeout; a
	// deregistration keeps the delay it started with.
	const delay = fleetDrain
	f.simPost(t, "/attributes?deregistration_delay="+delay.String())
	p := f.portTo(t, victim, netnsSrvAddr+":80")
	const lines = 8 // 8 × 400 ms of download: done well within the delay
	dl := f.startSlow(t, p, lines, 400)
	f.note(t, []uint16{p}, func(uint16) bool { return true })

	// Before the request: the simulator starts the delay as it takes it,
	// and a time taken after its answer made the target look unused a
	// little early (7.94 s of an 8 s delay, under load).
	deregAt := time.Now()
	f.simPost(t, "/deregister?target="+x.addr)
	if ts := f.targets(t)[x.addr]; ts.State != gwlbsim.StateDraining {
		t.Errorf("the deregistered appliance is %s in the simulator, want draining", ts.State)
	}
	if code := f.appHealth(x); code != 200 {
		t.Errorf("appliance %s's health check during the deregistration delay, before any SIGTERM: %d, want 200", x.name, code)
	}
	select {
	case <-dl.done:
		t.Fatal("the download ended before the deregistration could be seen")
	default:
	}

	ports := []uint16{f.port(), f.port(), f.port(), f.port(), f.port(), f.port()}
	for _, r := range f.curlAll(ports, hello) {
		if r.code != 0 || r.status != 200 {
			t.Errorf("a new flow during the deregistration delay: %s", r)
		}
	}
	for q, i := range f.note(t, ports, func(uint16) bool { return true }) {
		if i != survivor {
			t.Errorf("a new flow from port %d during the deregistration delay went to %s, want %s (the others are draining or dead)", q, f.name(i), f.apps[survivor].name)
		}
	}

	err, rest, ended := dl.wait(delay)
	switch {
	case !ended:
		t.Fatalf("the download in progress did not finish within the %s deregistration delay", delay)
	case err != nil || len(rest) != lines || rest[len(rest)-1] != "done":
		t.Errorf("the download in progress during the deregistration delay: %v %s; got %d more lines %q, want %d and done",
			err, dl.errb.String(), len(rest), rest, lines)
	}

	// The delay ends: the group terminates the instance.
	for deadline := deregAt.Add(delay + 10*time.Second); f.targets(t)[x.addr].State != gwlbsim.StateUnused; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("appliance %s still not unused %s after its deregistration (delay %s)", x.name, time.Since(deregAt).Round(time.Millisecond), delay)
		}
	}
	if d := time.Since(deregAt); d < delay {
		t.Errorf("unused %s after the deregistration, before the %s delay", d, delay)
	}
	if err := x.proc.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sigAt := time.Now()
	var code int
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code = f.appHealth(x); code == 503 || code == 0 {
			break
		}
	}
	failedAfter := time.Since(sigAt)
	if code == 200 {
		t.Errorf("appliance %s's health check after SIGTERM: %d, want 503 (or no answer, once it has exited)", x.name, code)
	}

	exit := x.proc.wait(fleetDrain + 5*time.Second)
	took := x.proc.at.Sub(sigAt)
	switch {
	case exit != 0:
		t.Errorf("appliance %s exit code %d after SIGTERM, want 0:\n%s", x.name, exit, x.proc.logs())
	case took > fleetDrain+time.Second:
		t.Errorf("appliance %s exited %s after SIGTERM, beyond its drain (%s) and a second", x.name, took, fleetDrain)
	}
	t.Logf("drain: deregistration → %s's download finished %s later, the target unused after the %s delay; SIGTERM → health check %d within %s, exit %s after it (drain %s)",
		x.name, dl.at.Sub(deregAt).Round(time.Millisecond), delay, code, failedAfter.Round(time.Millisecond), took.Round(time.Millisecond), fleetDrain)

	owed := f.portsOf(victim)
	if missing := f.waitRecords(t, x, owed); len(missing) > 0 {
		t.Errorf("the drained appliance lost records: ports %v missing from stream %s", missing, x.stream)
	}
	if ds := f.appStatsLog(x); ds != "" {
		t.Logf("drained appliance: %s", ds)
	}
}

// fleetRecords: across all the steps, every record is in the stream of the
// appliance that carried its flow, once, and every record owed is there.
func fleetRecords(t *testing.T, f *fleet) {
	recs := make([]int, fleetSize)
	flows := make([]int, fleetSize)
	owed := make([]int, fleetSize)
	f.mu.Lock()
	carrier := map[uint16]int{}
	for p, i := range f.carrier {
		carrier[p] = i
		if i >= 0 {
			flows[i]++
			if f.wantRecord[p] {
				owed[i]++
			}
		}
	}
	f.mu.Unlock()
	for i, a := range f.apps {
		got := f.recordPorts(t, a)
		for p, n := range got {
			c, known := carrier[p]
			switch {
			case !known:
				t.Errorf("stream %s has a record of port %d, which the test never used", a.stream, p)
			case c != i:
				t.Errorf("stream %s has a record of port %d, whose flow %s carried", a.stream, p, f.name(c))
			case n != 1:
				t.Errorf("stream %s has %d records of port %d, want 1", a.stream, n, p)
			}
			recs[i] += n
		}
		for _, p := range f.portsOf(i) {
			if got[p] == 0 {
				t.Errorf("stream %s lacks the record of port %d", a.stream, p)
			}
		}
	}
	t.Logf("over the whole test: flows per appliance %s (of which owing a record %s); records per stream %s",
		f.perApp(flows), f.perApp(owed), f.perStream(recs))
	for _, r := range f.streamRecords(t, f.apps[f.carrier[f.rebalanced]]) {
		if r.ClientPort == f.rebalanced {
			t.Logf("the rebalanced flow's record, from %s (the appliance it was moved off) at its drain: %s %s %s, result %s, %d bytes in, %.0f ms",
				f.apps[f.carrier[f.rebalanced]].stream, r.Kind, r.Method, r.Path, r.Result, r.BytesIn, r.DurationMS)
		}
	}
}

// name is appliance i's name, or "none".
func (f *fleet) name(i int) string {
	if i < 0 || i >= len(f.apps) {
		return "none"
	}
	return f.apps[i].name
}

func (f *fleet) perApp(n []int) string {
	var s []string
	for i, a := range f.apps {
		s = append(s, fmt.Sprintf("%s (%s) %d", a.name, a.addr, n[i]))
	}
	return strings.Join(s, ", ")
}

func (f *fleet) perStream(n []int) string {
	var s []string
	for i, a := range f.apps {
		s = append(s, fmt.Sprintf("%s %d", a.stream, n[i]))
	}
	return strings.Join(s, ", ")
}

// flowInfo returns the simulator's flow from client port p.
func (f *fleet) flowInfo(t *testing.T, p uint16) gwlbsim.FlowInfo {
	t.Helper()
	var flows []gwlbsim.FlowInfo
	f.simGet(t, "/flows", &flows)
	for _, fl := range flows {
		if fl.Proto == "tcp" && fl.Src.Port() == p && fl.Src.Addr().String() == netnsClientAddr {
			return fl
		}
	}
	t.Fatalf("the simulator has no flow from port %d", p)
	return gwlbsim.FlowInfo{}
}

func (f *fleet) flowCookie(t *testing.T, p uint16) string { return f.flowInfo(t, p).Cookie }

// appStatsLog summarises the last CloudWatch counters an appliance logged,
// if its log says; "" otherwise.
func (f *fleet) appStatsLog(a *fleetApp) string {
	for _, l := range strings.Split(a.proc.logs(), "\n") {
		if strings.Contains(l, "cloudwatch") && strings.Contains(l, "shipped") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
