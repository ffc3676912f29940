package appliance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"

	"golang.org/x/net/dns/dnsmessage"
)

// Addresses of the namespace test. All of them exist only inside the
// namespaces the test creates.
const (
	netnsClientAddr    = "198.18.50.2" // the client, on gwlbsim's TUN device
	netnsSimAddr       = "198.18.1.2"  // gwlbsim's outer address (client ns)
	netnsApplianceAddr = "198.18.1.1"  // the appliance's GENEVE side (app ns)
	netnsAppSrvAddr    = "198.18.2.1"  // the appliance towards the servers (app ns)
	netnsSrvAddr       = "198.18.2.3"  // HTTP and DNS servers (srv ns)
	netnsNoHost        = "198.18.2.99" // in the servers' subnet, nobody there

	netnsEndpoint   = "vpce-0123456789abcdef0" // gwlbsim's default endpoint
	netnsAttachment = "0a1b2c3d4e5f6071"       // and attachment
	netnsAdmin      = "http://" + netnsApplianceAddr + ":8080"
	netnsTUN        = "tun0"
	netnsDrain      = 15 * time.Second
)

// TestNetnsEndToEnd runs the real binaries the way they run in AWS, with
// real client tools:
//
//	client ns                          app ns                        srv ns
//	curl/dig/ping                      gwlbproxy                     HTTP :80, DNS :53
//	  │ default dev tun0                 GENEVE 0.0.0.0:6081            198.18.2.3/24
//	  ▼ 198.18.50.2/32                   admin 198.18.1.1:8080              ▲
//	gwlbsim (TUN) ─ 198.18.1.2/24 ═veth═ 198.18.1.1/24                      │
//	                                     198.18.2.1/24 ══════veth═══════════╯
//
// The client namespace has no route to the servers but its TUN device: every
// packet reaches them only as GENEVE through the appliance, which terminates
// it in its gVisor stack and dials out from 198.18.2.1. Nothing forwards in
// the kernel.
func TestNetnsEndToEnd(t *testing.T) {
	requireNetns(t)
	start := time.Now()
	applianceBin, simBin := buildBinaries(t)
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))

	setup := time.Now()
	tp := newTopology(t)
	startServers(t, tp.srv, netnsSrvAddr)
	accessLog := filepath.Join(t.TempDir(), "access.log")
	app := startInNS(t, "gwlbproxy", tp.app, nil, nil, nil, applianceBin,
		"--geneve-addr", "0.0.0.0:6081", "--admin-addr", netnsApplianceAddr+":8080", "--gwlb-cidrs", netnsSimAddr+"/32",
		"--access-log", accessLog, "--drain-timeout", netnsDrain.String(), "--idle-timeout", "2s",
		"--dial-timeout", "3s")
	waitHealthy(t, tp, app)
	simOut := &lockedBuffer{}
	sim := startInNS(t, "gwlbsim", tp.client, simOut, nil, nil, simBin,
		"--addr", netnsSimAddr, "--appliance", netnsApplianceAddr, "--tun", netnsTUN, "--senders", "8")
	tp.routeClientThroughTUN(t, netnsTUN, sim)
	t.Logf("namespaces and processes ready in %s", time.Since(setup).Round(time.Millisecond))

	traffic := time.Now()
	// Pings take seconds; they run while the rest of the traffic flows.
	pingDone := make(chan cmdResult, 1)
	go func() { pingDone <- inNS(tp.client, "ping", "-n", "-c", "3", "-W", "2", netnsSrvAddr) }()
	noHostDone := make(chan cmdResult, 1)
	go func() { noHostDone <- inNS(tp.client, "ping", "-n", "-c", "2", "-W", "1", netnsNoHost) }()

	// HTTP: the body arrives, and the server saw the appliance's address,
	// not the client's: the flow was re-originated.
	r := inNS(tp.client, "curl", "-sS", "--max-time", "10", "http://"+netnsSrvAddr+":80/hello")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "hello from srv; you are "+netnsAppSrvAddr+":") {
		t.Errorf("curl /hello through the appliance: want the greeting naming %s as the peer; %s", netnsAppSrvAddr, r)
	}

	// The server got the request exactly once: the appliance must never
	// replay what it peeked to classify the connection. (Asked inside the
	// servers' namespace, not through the appliance.)
	if r = inNS(tp.srv, "curl", "-sS", "--max-time", "5", "http://"+netnsSrvAddr+"/hello-count"); strings.TrimSpace(r.stdout) != "1" {
		t.Errorf("the server received /hello %s times, want once; %s", strings.TrimSpace(r.stdout), r)
	}

	// DNS over UDP, and over TCP: a byte stream the appliance does not
	// recognise, relayed as it is.
	for _, proto := range []string{"+notcp", "+tcp"} {
		r = inNS(tp.client, "dig", proto, "+time=3", "+tries=1", "@"+netnsSrvAddr, strings.TrimSuffix(netnsDNSName, "."), "A", "+short")
		if r.code != 0 || strings.TrimSpace(r.stdout) != netnsSrvAddr {
			t.Errorf("dig %s %s A: want %s; %s", proto, netnsDNSName, netnsSrvAddr, r)
		}
	}

	// A closed port is refused at once: the appliance dials before it
	// completes the client's handshake and answers the refusal with a RST.
	r = inNS(tp.client, "curl", "-sS", "--max-time", "10", "http://"+netnsSrvAddr+":81/")
	if r.code != 7 || r.elapsed > 3*time.Second {
		t.Errorf("curl to a closed port: want exit 7 (could not connect) within 3s, not a timeout; %s", r)
	}

	// The appliance's own addresses are never a destination.
	r = inNS(tp.client, "curl", "-sS", "--max-time", "10", "http://"+netnsAppSrvAddr+":8080/")
	if r.code != 7 || r.elapsed > 3*time.Second {
		t.Errorf("curl to the appliance's own address through the data path: want a prompt RST (exit 7); %s", r)
	}

	// ping succeeds only if the real destination answers: the appliance
	// relays echo, never answers it itself, so the address nobody holds
	// stays silent.
	if r = <-pingDone; r.code != 0 || !strings.Contains(r.stdout, " 0% packet loss") {
		t.Errorf("ping %s: want 0%% packet loss; %s", netnsSrvAddr, r)
	}
	if r = <-noHostDone; r.code == 0 || !strings.Contains(r.stdout, "100% packet loss") {
		t.Errorf("ping %s (no such host): want 100%% packet loss; %s", netnsNoHost, r)
	}
	t.Logf("client traffic done in %s", time.Since(traffic).Round(time.Millisecond))

	// The replies left through the raw return path (as root, auto picks it),
	// and nothing was dropped on the way out.
	var st stats
	r = inNS(tp.app, "curl", "-sS", "--max-time", "5", netnsAdmin+"/stats")
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("GET /stats: %v; %s", err, r)
	}
	if st.Netstack.ReturnPath != "raw" {
		t.Errorf("/stats return_path %q, want raw", st.Netstack.ReturnPath)
	}
	for _, reason := range []string{"send_error", "reply_without_flow", "reply_too_big", "icmp_unavailable", "flow_table_full"} {
		if n := st.Netstack.Drops[reason]; n != 0 {
			t.Errorf("/stats drops[%s] = %d, want 0", reason, n)
		}
	}
	if st.Netstack.EchoRequests < 5 || st.Netstack.TCPConnections < 3 || st.Netstack.UDPFlows < 1 {
		t.Errorf("/stats: %d echo requests, %d TCP attempts, %d UDP flows; want at least 5, 3, 1",
			st.Netstack.EchoRequests, st.Netstack.TCPConnections, st.Netstack.UDPFlows)
	}

	drainTest(t, tp, app)

	// gwlbsim's verdict on every reply: each came to its port 6081 under
	// the exact GENEVE header of its flow.
	if err := sim.signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stopping gwlbsim: %v", err)
	}
	if code := sim.wait(5 * time.Second); code != 0 {
		t.Fatalf("gwlbsim exit code %d after SIGTERM, want 0:\n%s", code, sim.logs())
	}
	var ss struct {
		gwlbsim.Stats
		TUN struct {
			SendErrors  uint64 `json:"send_errors"`
			ToDevice    uint64 `json:"to_device"`
			WriteErrors uint64 `json:"write_errors"`
		} `json:"tun"`
	}
	if err := json.Unmarshal([]byte(simOut.String()), &ss); err != nil {
		t.Fatalf("gwlbsim's stats %q: %v", simOut.String(), err)
	}
	if ss.Sent == 0 || ss.Received == 0 || ss.HeaderMismatch != 0 || ss.UnknownFlow != 0 || ss.Malformed != 0 ||
		ss.WrongPort != 0 || ss.UnknownEndpoint != 0 || ss.TUN.SendErrors != 0 || ss.TUN.WriteErrors != 0 ||
		ss.TUN.ToDevice != ss.Received {
		t.Errorf("gwlbsim stats %s: want traffic both ways, no rejected reply, no pump error", simOut.String())
	}

	checkRecords(t, accessLog)
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// waitHealthy waits until the appliance answers its health check.
func waitHealthy(t *testing.T, tp *topology, app *nsProc) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if healthCode(tp) == 200 {
			return
		}
		if app.exited() || time.Now().After(deadline) {
			t.Fatalf("the appliance did not become healthy:\n%s", app.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// healthCode returns the status of GET / on the admin port (0: no answer).
func healthCode(tp *topology) int {
	r := inNS(tp.app, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", netnsAdmin+"/")
	code, _ := strconv.Atoi(strings.TrimSpace(r.stdout))
	return code
}

// drainTest: SIGTERM while a slow download runs. The health check turns 503
// at once, the download still completes, and the appliance exits 0 as soon
// as it has, long before the drain timeout.
func drainTest(t *testing.T, tp *topology, app *nsProc) {
	t.Helper()
	if code := healthCode(tp); code != 200 {
		t.Fatalf("health check before SIGTERM: %d, want 200", code)
	}
	const lines = 8 // 8 × 400 ms: 3.2 s of streaming
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	curl := exec.Command("ip", "netns", "exec", tp.client, "curl", "-sS", "-N", "--max-time", "20",
		"http://"+netnsSrvAddr+"/slow?n=8&ms=400")
	var curlErr bytes.Buffer
	curl.Stdout, curl.Stderr = pw, &curlErr
	curl.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := curl.Start(); err != nil {
		t.Fatalf("starting the slow download: %v", err)
	}
	pw.Close()
	curlDone := make(chan error, 1)
	var curlAt time.Time
	go func() {
		err := curl.Wait()
		curlAt = time.Now()
		curlDone <- err
	}()
	t.Cleanup(func() {
		_ = curl.Process.Kill()
	})
	got := make(chan string, lines+2)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			got <- sc.Text()
		}
		close(got)
	}()
	var body []string
	select {
	case l := <-got:
		body = append(body, l)
	case <-time.After(5 * time.Second):
		t.Fatalf("the slow download did not start within 5s: %s", curlErr.String())
	}

	sigAt := time.Now()
	if err := app.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Health turns 503 while the download is still running.
	var code int
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if code = healthCode(tp); code == 503 {
			break
		}
	}
	select {
	case <-curlDone:
		t.Fatalf("the slow download ended before the health check could be seen draining (status %d)", code)
	default:
	}
	if code != 503 {
		t.Errorf("health check while draining: %d, want 503", code)
	}

	select {
	case err := <-curlDone:
		if err != nil {
			t.Errorf("slow download during the drain: %v %s", err, curlErr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("slow download did not finish within 15s")
	}
	for l := range got {
		body = append(body, l)
	}
	if len(body) != lines+1 || body[len(body)-1] != "done" {
		t.Errorf("slow download during the drain got %d lines %q, want %d chunks and done", len(body), body, lines)
	}
	// The appliance waits for the flow (had it stopped early, the download
	// above would have been cut short), then stops at once.
	code = app.wait(10 * time.Second)
	switch {
	case code != 0:
		t.Errorf("appliance exit code %d after SIGTERM, want 0:\n%s", code, app.logs())
	case app.at.Sub(sigAt) > netnsDrain-3*time.Second:
		t.Errorf("the appliance exited %s after SIGTERM: it waited for the drain timeout (%s), not for its flows",
			app.at.Sub(sigAt).Round(time.Millisecond), netnsDrain)
	default:
		t.Logf("drain: SIGTERM → download done %s later → appliance exited %s after SIGTERM",
			curlAt.Sub(sigAt).Round(time.Millisecond), app.at.Sub(sigAt).Round(time.Millisecond))
	}
}

// checkRecords reads the access log the appliance wrote before it exited.
func checkRecords(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the access log: %v", err)
	}
	var recs []records.Record
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var rec records.Record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		recs = append(recs, rec)
	}
	find := func(kinds []string, dest string, port uint16, ok func(*records.Record) bool) *records.Record {
		for i := range recs {
			r := &recs[i]
			for _, k := range kinds {
				if r.Kind == k && r.DestIP == dest && r.DestPort == port && (ok == nil || ok(r)) {
					return r
				}
			}
		}
		return nil
	}
	cookie := regexp.MustCompile(`^[0-9a-f]{8}$`)
	// Every record names the flow as the GWLB described it.
	for _, r := range recs {
		if r.Endpoint != netnsEndpoint || r.Attachment != netnsAttachment || !cookie.MatchString(r.FlowCookie) ||
			r.ClientIP != netnsClientAddr {
			t.Errorf("record %+v: want endpoint %s, attachment %s, a flow cookie, client %s",
				r, netnsEndpoint, netnsAttachment, netnsClientAddr)
		}
	}
	// Plain HTTP is intercepted (kind http, one record per request, body
	// bytes); were it relayed as bytes, it would be one tcp record.
	webKinds, udpKinds := []string{"http", "tcp"}, []string{"udp", "dns"}
	isHello := func(r *records.Record) bool { return r.DurationMS < 2000 } // not the slow download
	var hellos []*records.Record
	for i := range recs {
		if r := &recs[i]; slices.Contains(webKinds, r.Kind) && r.DestIP == netnsSrvAddr && r.DestPort == 80 && isHello(r) {
			hellos = append(hellos, r)
		}
	}
	switch {
	case len(hellos) != 1:
		t.Errorf("want one record for GET /hello to %s:80, got %d", netnsSrvAddr, len(hellos))
	case hellos[0].Result != "ok" || hellos[0].Action != "allow" || hellos[0].BytesIn == 0:
		t.Errorf("GET /hello record %+v: want allow, ok, bytes back", hellos[0])
	case hellos[0].Kind == "http" && (hellos[0].Method != "GET" || hellos[0].Path != "/hello" || hellos[0].Status != 200 || hellos[0].Host != netnsSrvAddr):
		t.Errorf("GET /hello record %+v: want method, path, status 200 and host", hellos[0])
	case hellos[0].Kind == "tcp" && hellos[0].BytesOut == 0:
		t.Errorf("GET /hello relayed as tcp %+v: want bytes both ways", hellos[0])
	}
	// DNS over TCP: an unrecognised byte stream, relayed as tcp.
	if r := find([]string{"tcp"}, netnsSrvAddr, 53, nil); r == nil || r.Result != "ok" || r.Action != "allow" || r.BytesOut == 0 || r.BytesIn == 0 {
		t.Errorf("want an allowed, ok tcp record to %s:53 with bytes both ways; got %+v", netnsSrvAddr, r)
	}
	// A UDP flow that ends by idling ended normally.
	if r := find(udpKinds, netnsSrvAddr, 53, nil); r == nil || r.Result != "ok" || r.BytesOut == 0 || r.BytesIn == 0 {
		t.Errorf("want an ok udp record to %s:53 with bytes both ways; got %+v", netnsSrvAddr, r)
	}
	if r := find([]string{"icmp"}, netnsSrvAddr, 0, nil); r == nil || r.Result != "ok" || r.Packets != 3 || r.BytesIn == 0 {
		t.Errorf("want an ok icmp record to %s for 3 echo requests; got %+v", netnsSrvAddr, r)
	}
	if r := find([]string{"icmp"}, netnsNoHost, 0, nil); r == nil || r.Result != "timeout" || r.BytesIn != 0 {
		t.Errorf("want an icmp record to %s with result timeout and nothing back; got %+v", netnsNoHost, r)
	}
	if r := find([]string{"tcp"}, netnsSrvAddr, 81, nil); r == nil || r.Result != "refused" {
		t.Errorf("want a refused tcp record to %s:81; got %+v", netnsSrvAddr, r)
	}
	if r := find([]string{"tcp"}, netnsAppSrvAddr, 8080, nil); r == nil || r.Action != "deny" || r.Result != "denied" {
		t.Errorf("want a denied tcp record to the appliance's own %s:8080; got %+v", netnsAppSrvAddr, r)
	}
	if r := find(webKinds, netnsSrvAddr, 80, func(r *records.Record) bool { return r.DurationMS > 2500 }); r == nil || r.Result != "ok" || r.BytesIn < int64(8*len("chunk 0\n")) {
		t.Errorf("want an ok tcp record for the slow download drained at shutdown; got %+v", r)
	}
	if t.Failed() {
		t.Logf("access log:\n%s", data)
	}
}

// TestNetnsDNSAnswer checks the namespace test's hand-built DNS server
// against an independent DNS codec; it needs no privileges.
func TestNetnsDNSAnswer(t *testing.T) {
	self := [4]byte{198, 18, 2, 3}
	query := func(name string, typ dnsmessage.Type) []byte {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0xbeef, RecursionDesired: true})
		b.EnableCompression()
		if err := b.StartQuestions(); err != nil {
			t.Fatal(err)
		}
		if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
			t.Fatal(err)
		}
		// An EDNS OPT record, as dig sends: it must not confuse the server.
		var opt dnsmessage.ResourceHeader
		if err := opt.SetEDNS0(1232, dnsmessage.RCodeSuccess, false); err != nil {
			t.Fatal(err)
		}
		if err := b.StartAdditionals(); err != nil {
			t.Fatal(err)
		}
		if err := b.OPTResource(opt, dnsmessage.OPTResource{}); err != nil {
			t.Fatal(err)
		}
		q, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	parse := func(resp []byte) dnsmessage.Message {
		t.Helper()
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("response %x does not parse: %v", resp, err)
		}
		if m.ID != 0xbeef || !m.Response || !m.Authoritative || !m.RecursionDesired || len(m.Questions) != 1 {
			t.Fatalf("response header %+v, questions %d: want ID, QR, AA, RD and the question echoed", m.Header, len(m.Questions))
		}
		return m
	}

	m := parse(dnsAnswer(query("WWW.gwlbproxy.test.", dnsmessage.TypeA), netnsDNSName, self))
	if m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("A query: rcode %v, %d answers; want one answer", m.RCode, len(m.Answers))
	}
	if a, ok := m.Answers[0].Body.(*dnsmessage.AResource); !ok || a.A != self || m.Answers[0].Header.Name.String() != "WWW.gwlbproxy.test." {
		t.Errorf("answer %+v, want A %v for the queried name", m.Answers[0], self)
	}
	if m := parse(dnsAnswer(query("www.gwlbproxy.test.", dnsmessage.TypeAAAA), netnsDNSName, self)); m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 {
		t.Errorf("AAAA query: rcode %v, %d answers; want NOERROR without answers", m.RCode, len(m.Answers))
	}
	if m := parse(dnsAnswer(query("other.test.", dnsmessage.TypeA), netnsDNSName, self)); m.RCode != dnsmessage.RCodeNameError || len(m.Answers) != 0 {
		t.Errorf("query for another name: rcode %v, %d answers; want NXDOMAIN", m.RCode, len(m.Answers))
	}
	// Truncated queries get FORMERR or nothing, never a panic.
	q := query("www.gwlbproxy.test.", dnsmessage.TypeA)
	for n := range len(q) {
		resp := dnsAnswer(q[:n], netnsDNSName, self)
		if n < 12 && resp != nil {
			t.Errorf("a %d-byte query got an answer", n)
		}
		if n >= 12 && n < 12+20+4 && (len(resp) != 12 || resp[3]&0x0f != 1) {
			t.Errorf("a query truncated to %d bytes: response %x, want a bare FORMERR", n, resp)
		}
	}
	// A response is not answered.
	if r := dnsAnswer(dnsAnswer(q, netnsDNSName, self), netnsDNSName, self); r != nil {
		t.Errorf("a response was answered: %x", r)
	}
}
