package appliance

// The destination check end to end, with real tools: Debian's dnsmasq as
// the DNS server in the servers' namespace, the real gwlbproxy binary with
// destination_check: dns, and curl and dig in the client namespace.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

const (
	dcSpoofAddr = "198.18.2.4"  // a second origin, same certificate: where a spoofed name goes
	dcDNSAddr   = "198.18.2.53" // dnsmasq
	dcBank      = netnsBank     // bank.example.test: resolves to netnsSrvAddr
	dcAlias     = "alias.example.test"
)

const dcNetnsPolicy = `
policy:
  default: deny
  destination_check: dns
  rules:
    - name: bank
      domains: ["bank.example.test", "alias.example.test"]
      protocols: [tls, http]
      action: splice
    - name: resolver
      dest_cidrs: ["198.18.2.53/32"]
      protocols: [udp]
      ports: [53]
      action: allow
`

// startDnsmasq runs dnsmasq in namespace ns on addr:53, authoritative for
// example.test: bank.example.test is netnsSrvAddr, alias.example.test a
// CNAME of it, other names there NXDOMAIN. It logs every query to its
// output.
func startDnsmasq(t *testing.T, ns, addr string) *nsProc {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		testenv.RequirePrivileged(t, "the destination check's namespace test needs dnsmasq in PATH (apt-get install dnsmasq-base)")
	}
	p := startInNS(t, "dnsmasq", ns, nil, nil, nil, bin,
		"--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root",
		"--listen-address="+addr, "--bind-interfaces", "--port=53", "--log-queries", "--log-facility=-",
		"--local=/example.test/", "--local-ttl=60",
		"--host-record="+dcBank+","+netnsSrvAddr, "--cname="+dcAlias+","+dcBank)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(inNS(ns, "dig", "+time=1", "+tries=1", "+short", "@"+addr, dcBank, "A").stdout, netnsSrvAddr) {
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("dnsmasq does not answer on %s:\n%s", addr, p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// TestNetnsDestCheck: with destination_check: dns, a spoofed SNI or Host
// towards an address the name does not resolve to is denied, and the same
// name to its real address still works; first with the answers of a real
// DNS server (dnsmasq) the appliance asks itself, then with answers the
// client got through the data path while the appliance's own resolver
// answers nothing.
func TestNetnsDestCheck(t *testing.T) {
	requireNetns(t)
	start := time.Now()
	applianceBin, simBin := buildBinaries(t)
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))

	origins := writeOrigins(t) // port 443: a certificate for www and bank
	tp := newTopology(t)
	for _, a := range []string{dcSpoofAddr, dcDNSAddr} {
		mustRun(t, "ip", "-n", tp.srv, "addr", "add", a+"/24", "dev", "to-app")
	}
	startServers(t, tp.srv, netnsSrvAddr, netnsTLSEnv+"="+origins.dir)
	startServers(t, tp.srv, dcSpoofAddr, netnsTLSEnv+"="+origins.dir)
	dnsmasq := startDnsmasq(t, tp.srv, dcDNSAddr)
	work := t.TempDir()
	polFile := filepath.Join(work, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(dcNetnsPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := accessLog(filepath.Join(work, "access.log"))
	app := startInterceptAppliance(t, tp, "gwlbproxy", applianceBin, string(logs),
		"--config", polFile, "--state-dir", filepath.Join(work, "state"), "--dns-resolver", dcDNSAddr)
	sim := startInNS(t, "gwlbsim", tp.client, &lockedBuffer{}, nil, nil, simBin,
		"--addr", netnsSimAddr, "--appliance", netnsApplianceAddr, "--tun", netnsTUN, "--senders", "8")
	tp.routeClientThroughTUN(t, netnsTUN, sim)

	resolveTo := func(name, port, addr string) string { return name + ":" + port + ":" + addr }
	httpsGet := func(name, addr string, extra ...string) curlResult {
		return curl(tp.client, append([]string{"--cacert", origins.caFile, "--resolve", resolveTo(name, "443", addr), "https://" + name + "/hello"}, extra...)...)
	}
	httpGet := func(name, addr string) curlResult {
		return curl(tp.client, "-H", "Host: "+name, "http://"+addr+"/hello")
	}
	// Each record is taken once: curl may get a client port an earlier
	// request of the test had, and its record must not be taken for the
	// new request's.
	taken := map[string]bool{}
	record := func(what, kind string, port uint16) *records.Record {
		rec := logs.await(t, what, func(r *records.Record) bool {
			return r.Kind == kind && r.ClientPort == port && !taken[r.Time.String()+r.Kind]
		})
		if rec != nil {
			taken[rec.Time.String()+rec.Kind] = true
		}
		return rec
	}
	wantDenied := func(what string, rec *records.Record, name, dest, because string) {
		t.Helper()
		if rec == nil {
			return
		}
		if rec.Action != "deny" || rec.DestCheck != "mismatch" || (rec.SNI != name && rec.Host != name) || rec.DestIP != dest ||
			!strings.Contains(rec.Error, because) {
			t.Errorf("%s: record %+v; want action deny, dest_check mismatch, the name %s, dest_ip %s, an error saying %q", what, rec, name, dest, because)
		}
	}
	wantPassed := func(what string, rec *records.Record, action, name string) {
		t.Helper()
		if rec != nil && (rec.Action != action || rec.DestCheck != "ok" || (rec.SNI != name && rec.Host != name) || rec.DestIP != netnsSrvAddr) {
			t.Errorf("%s: record %+v; want action %s, dest_check ok, the name %s, dest_ip %s", what, rec, action, name, netnsSrvAddr)
		}
	}
	mismatch := func(name, dest string) string {
		return fmt.Sprintf("%s is not an address of %s (resolves to %s)", dest, name, netnsSrvAddr)
	}

	t.Run("OwnLookup", func(t *testing.T) {
		// SNI: spliced TLS. The real address works...
		r := httpsGet(dcBank, netnsSrvAddr)
		if r.code != 0 || r.status != 200 || !strings.Contains(r.body, "host "+dcBank) {
			t.Errorf("https://%s at its real address: %s", dcBank, r)
		}
		wantPassed("SNI to the real address", record("SNI to the real address", "tls", r.localPort), "splice", dcBank)
		// ...another address, with the same name, is refused.
		r = httpsGet(dcBank, dcSpoofAddr)
		if r.code != 35 || !strings.Contains(r.stderr, "access denied") {
			t.Errorf("https://%s at %s: want exit 35 with an access_denied alert; %s", dcBank, dcSpoofAddr, r)
		}
		wantDenied("spoofed SNI", record("spoofed SNI", "tls", r.localPort), dcBank, dcSpoofAddr, mismatch(dcBank, dcSpoofAddr))

		// Host: plain HTTP.
		r = httpGet(dcBank, netnsSrvAddr)
		if r.code != 0 || r.status != 200 || !strings.Contains(r.body, "host "+dcBank) {
			t.Errorf("Host %s to its real address: %s", dcBank, r)
		}
		wantPassed("Host to the real address", record("Host to the real address", "http", r.localPort), "allow", dcBank)
		r = httpGet(dcBank, dcSpoofAddr)
		if r.status != 403 || strings.Contains(r.body, "hello from srv") {
			t.Errorf("Host %s to %s: want 403 from the appliance; %s", dcBank, dcSpoofAddr, r)
		}
		wantDenied("spoofed Host", record("spoofed Host", "http", r.localPort), dcBank, dcSpoofAddr, mismatch(dcBank, dcSpoofAddr))

		// A CNAME: the alias's addresses are its target's (-k: the
		// origin's certificate does not name the alias).
		if r = httpsGet(dcAlias, netnsSrvAddr, "-k"); r.code != 0 || r.status != 200 {
			t.Errorf("https://%s (a CNAME) at the real address: %s", dcAlias, r)
		}
		r = httpsGet(dcAlias, dcSpoofAddr, "-k")
		if r.code != 35 {
			t.Errorf("https://%s (a CNAME) at %s: want exit 35; %s", dcAlias, dcSpoofAddr, r)
		}
		wantDenied("spoofed alias", record("spoofed alias", "tls", r.localPort), dcAlias, dcSpoofAddr, mismatch(dcAlias, dcSpoofAddr))

		// The answers came from dnsmasq, asked by the appliance itself.
		if out := dnsmasq.logs(); !strings.Contains(out, "query[A] "+dcBank+" from "+netnsAppSrvAddr) ||
			!strings.Contains(out, "query[AAAA] "+dcBank+" from "+netnsAppSrvAddr) {
			t.Errorf("dnsmasq saw no A and AAAA query for %s from the appliance (%s):\n%s", dcBank, netnsAppSrvAddr, out)
		}
	})

	// The appliance again, its own resolver a port where nothing answers:
	// only the answers relayed to the client can vouch for the name.
	if err := app.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := app.wait(10 * time.Second); code != 0 {
		t.Fatalf("appliance exit code %d after SIGTERM:\n%s", code, app.logs())
	}
	logs = accessLog(filepath.Join(work, "observed.log"))
	deadResolver := dcDNSAddr + ":5353"
	startInterceptAppliance(t, tp, "gwlbproxy-observed", applianceBin, string(logs),
		"--config", polFile, "--state-dir", filepath.Join(work, "state"), "--dns-resolver", deadResolver)

	t.Run("ObservedAnswers", func(t *testing.T) {
		// No answer seen yet, and the own lookup fails: refused.
		r := httpsGet(dcBank, netnsSrvAddr)
		if r.code != 35 {
			t.Errorf("before any DNS answer: want exit 35; %s", r)
		}
		wantDenied("before any DNS answer", record("before any DNS answer", "tls", r.localPort), dcBank, netnsSrvAddr,
			"no address of "+dcBank+" could be looked up: resolver "+deadResolver)

		// The client asks dnsmasq through the data path...
		for _, name := range []string{dcBank, dcAlias} {
			d := inNS(tp.client, "dig", "+time=3", "+tries=1", "+short", "@"+dcDNSAddr, name, "A")
			if d.code != 0 || !strings.HasSuffix(strings.TrimSpace(d.stdout), netnsSrvAddr) {
				t.Fatalf("dig @%s %s through the appliance: %s", dcDNSAddr, name, d)
			}
		}
		logs.await(t, "the dns record of the client's query", func(r *records.Record) bool {
			return r.Kind == "dns" && r.QueryName == dcBank && r.RCode == "NOERROR"
		})
		// ...and the answer it got vouches for the real address...
		r = httpsGet(dcBank, netnsSrvAddr)
		if r.code != 0 || r.status != 200 {
			t.Errorf("https://%s at its real address after the client's DNS answer: %s", dcBank, r)
		}
		wantPassed("SNI after the DNS answer", record("SNI after the DNS answer", "tls", r.localPort), "splice", dcBank)
		if r = httpGet(dcBank, netnsSrvAddr); r.status != 200 {
			t.Errorf("Host %s to its real address after the client's DNS answer: %s", dcBank, r)
		}
		if r = httpsGet(dcAlias, netnsSrvAddr, "-k"); r.status != 200 {
			t.Errorf("https://%s (a CNAME) after the client's DNS answer: %s", dcAlias, r)
		}
		// ...and for nothing else.
		r = httpsGet(dcBank, dcSpoofAddr)
		if r.code != 35 {
			t.Errorf("https://%s at %s after the DNS answer: want exit 35; %s", dcBank, dcSpoofAddr, r)
		}
		wantDenied("spoofed SNI after the DNS answer", record("spoofed SNI after the DNS answer", "tls", r.localPort), dcBank, dcSpoofAddr, mismatch(dcBank, dcSpoofAddr))
		r = httpGet(dcBank, dcSpoofAddr)
		if r.status != 403 {
			t.Errorf("Host %s to %s after the DNS answer: want 403; %s", dcBank, dcSpoofAddr, r)
		}
		wantDenied("spoofed Host after the DNS answer", record("spoofed Host after the DNS answer", "http", r.localPort), dcBank, dcSpoofAddr, mismatch(dcBank, dcSpoofAddr))
	})
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
