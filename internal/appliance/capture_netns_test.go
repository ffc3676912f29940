package appliance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack/capture"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestNetnsCaptureMirror: the real appliance, started with --mirror-tap,
// --pcap-dir, --tls-keylog and --capture-plaintext between namespaces,
// serves real curls: a bumped HTTPS request over HTTP/1.1, one over
// HTTP/2, and a spliced one. tcpdump on the mirror device (in the
// appliance's namespace) sees their wire packets on the endpoint's VLAN,
// and on the endpoint's plaintext VLAN the decrypted side of the bumped
// connections, synthesized: tshark reads the HTTP/1.1 request (method,
// host, path) from it without the key log, with valid checksums, no
// malformed packet or TCP analysis flag, and follows the stream; the h2
// one decodes as HTTP/2 frames. The spliced request has no plaintext. With
// the key log, tshark also decrypts the bumped request from the wire
// packets, from the mirror and from the appliance's own pcap files, which
// hold the same plaintext streams on interfaces of their own. /stats
// counts what was mirrored, written and synthesized, and nothing dropped.
func TestNetnsCaptureMirror(t *testing.T) {
	requireNetns(t)
	requireTool(t, "tcpdump", "tcpdump")
	requireTool(t, "tshark", "tshark")
	applianceBin, simBin := buildBinaries(t)
	origins := writeOrigins(t)
	tp := newTopology(t)
	startServers(t, tp.srv, netnsSrvAddr, netnsTLSEnv+"="+origins.dir)
	work := t.TempDir()
	polFile := filepath.Join(work, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(netnsInterceptPol), 0o644); err != nil {
		t.Fatal(err)
	}
	keyLog, pcapDir := filepath.Join(work, "keys.log"), filepath.Join(work, "pcap")
	accessRecs := accessLog(filepath.Join(work, "access.log"))
	app := startInterceptAppliance(t, tp, "gwlbproxy", applianceBin, string(accessRecs),
		"--config", polFile, "--upstream-ca", origins.caFile, "--state-dir", filepath.Join(work, "state"),
		"--tls-keylog", keyLog, "--pcap-dir", pcapDir, "--mirror-tap", "ids0", "--capture-plaintext")
	for _, warning := range []string{"--tls-keylog: the secrets of every bumped TLS connection", "--capture-plaintext: the decrypted contents"} {
		// Healthy means logged, not yet read from its pipe: a loaded
		// machine's copy may lag the health check by a moment.
		for end := time.Now().Add(5 * time.Second); !strings.Contains(app.logs(), warning) && time.Now().Before(end); {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(app.logs(), warning) {
			t.Errorf("no warning at start %q:\n%s", warning, app.logs())
		}
	}

	// An IDS's view: tcpdump on the mirror device, in the appliance's
	// namespace, where the device is.
	mirrorPcap := filepath.Join(work, "mirror.pcap")
	dump := startInNS(t, "tcpdump", tp.app, nil, nil, nil, "tcpdump", "-i", "ids0", "-n", "--immediate-mode", "-U", "-s", "0", "-w", mirrorPcap)
	waitFor(t, "tcpdump on the mirror", func() string {
		if strings.Contains(dump.logs(), "listening on ids0") {
			return ""
		}
		if dump.exited() {
			t.Fatalf("tcpdump on the mirror exited: %s", dump.logs())
		}
		return dump.logs()
	})

	sim := startInNS(t, "gwlbsim", tp.client, &lockedBuffer{}, nil, nil, simBin,
		"--addr", netnsSimAddr, "--appliance", netnsApplianceAddr, "--tun", netnsTUN, "--senders", "8")
	tp.routeClientThroughTUN(t, netnsTUN, sim)

	caFile := filepath.Join(work, "ca.pem")
	if r := inNS(tp.app, "curl", "-sS", "--max-time", "5", "-o", caFile, netnsAdmin+"/ca.pem"); r.code != 0 {
		t.Fatalf("GET /ca.pem: %s", r)
	}
	bumped := curl(tp.client, "--http1.1", "--cacert", caFile, "--resolve", netnsWWW+":443:"+netnsSrvAddr,
		"https://"+netnsWWW+"/hello?who=mirror")
	if bumped.code != 0 || bumped.status != 200 {
		t.Fatalf("curl through the appliance: %s", bumped)
	}
	accessRecs.await(t, "the bumped request", func(rec *records.Record) bool {
		return rec.Kind == "http" && rec.ClientPort == bumped.localPort && rec.Action == "bump" && rec.Status == 200
	})
	bumpedH2 := curl(tp.client, "--http2", "--cacert", caFile, "--resolve", netnsWWW+":443:"+netnsSrvAddr,
		"https://"+netnsWWW+"/hello?who=h2")
	if bumpedH2.code != 0 || bumpedH2.status != 200 || bumpedH2.httpVersion != "2" {
		t.Fatalf("curl --http2 through the appliance: %s", bumpedH2)
	}
	spliced := curl(tp.client, "--http1.1", "--cacert", origins.caFile, "--resolve", netnsBank+":443:"+netnsSrvAddr,
		"https://"+netnsBank+"/hello?who=spliced")
	if spliced.code != 0 || spliced.status != 200 {
		t.Fatalf("curl through the appliance, spliced: %s", spliced)
	}
	accessRecs.await(t, "the spliced connection", func(rec *records.Record) bool {
		return rec.Kind == "tls" && rec.ClientPort == spliced.localPort && rec.Action == "splice"
	})
	accessRecs.await(t, "the bumped h2 connection", func(rec *records.Record) bool {
		return rec.Kind == "tls" && rec.ClientPort == bumpedH2.localPort && rec.Action == "bump" && rec.ALPN == "h2"
	})

	// /stats: mirrored and written, nothing dropped, the endpoint on VLAN
	// 1, the two bumped connections synthesized.
	var st stats
	waitFor(t, "the capture to settle", func() string {
		res := inNS(tp.app, "curl", "-sS", "--max-time", "5", netnsAdmin+"/stats")
		var now stats
		if err := json.Unmarshal([]byte(res.stdout), &now); err != nil || now.Capture == nil || now.Capture.Pcap == nil ||
			now.Capture.Mirror == nil || now.Capture.Plaintext == nil {
			return fmt.Sprintf("/stats without capture: %s", res)
		}
		prev := st
		st = now
		if prev.Capture == nil || now.Capture.Pcap.Packets == 0 || now.Capture.Pcap.Packets != prev.Capture.Pcap.Packets ||
			now.Capture.Mirror.Packets != prev.Capture.Mirror.Packets || now.Capture.Plaintext.Packets != prev.Capture.Plaintext.Packets {
			time.Sleep(200 * time.Millisecond)
			return fmt.Sprintf("still moving: %+v %+v %+v", *now.Capture.Pcap, *now.Capture.Mirror, *now.Capture.Plaintext)
		}
		return ""
	})
	pc, mc, pt := st.Capture.Pcap, st.Capture.Mirror, st.Capture.Plaintext
	if pc.Dropped != 0 || pc.Errors != 0 || mc.Dropped != 0 || mc.Errors != 0 || mc.Packets != pc.Packets || mc.Device != "ids0" ||
		len(mc.VLANs) != 1 || mc.PlaintextVLANOffset != 2000 {
		t.Errorf("capture stats: pcap %+v, mirror %+v", *pc, *mc)
	}
	if pt.Streams != 2 || pt.Packets < 20 || pt.Dropped != 0 || pt.Bytes == 0 {
		t.Errorf("plaintext stats %+v, want the two bumped connections", *pt)
	}
	var endpoint string
	for ep, id := range mc.VLANs {
		if id != 1 {
			t.Errorf("endpoint %s on VLAN %d, want 1", ep, id)
		}
		endpoint = ep
	}

	// tcpdump has written every mirrored frame (pcap header, and a record
	// header and 18 bytes of Ethernet and VLAN tag around each packet).
	waitFor(t, "tcpdump to write the mirrored frames", func() string {
		fi, err := os.Stat(mirrorPcap)
		if err != nil || uint64(fi.Size()) < 24+mc.Packets*(16+18)+mc.Bytes {
			time.Sleep(100 * time.Millisecond)
			return fmt.Sprintf("%v, %v", fi, err)
		}
		return ""
	})
	dump.stop(5 * time.Second)

	// The wire: the spliced and the bumped connections' TLS, on VLAN 1.
	out := tshark(t, "-r", mirrorPcap, "-Y", "vlan.id == 1 && tls.handshake.type == 1", "-T", "fields",
		"-e", "ip.src", "-e", "tcp.srcport", "-e", "tls.handshake.extensions_server_name")
	for _, w := range []string{
		fmt.Sprintf("%s\t%d\t%s\n", netnsClientAddr, bumped.localPort, netnsWWW),
		fmt.Sprintf("%s\t%d\t%s\n", netnsClientAddr, spliced.localPort, netnsBank),
	} {
		if !strings.Contains(out, w) {
			t.Errorf("the mirror's wire packets show ClientHellos\n%s\nwant among them\n%s", out, w)
		}
	}
	if n := strings.Count(tshark(t, "-r", mirrorPcap, "-Y", fmt.Sprintf("vlan.id == 1 && tcp.port == %d", spliced.localPort),
		"-T", "fields", "-e", "frame.number"), "\n"); n < 10 {
		t.Errorf("the mirror holds %d packets of the spliced connection, want the whole connection", n)
	}
	// The key log decrypts the bumped request from the wire packets.
	want := fmt.Sprintf("1\t%s\tGET\t/hello?who=mirror\n", netnsClientAddr)
	out = tshark(t, "-r", mirrorPcap, "-o", "tls.keylog_file:"+keyLog, "-Y", "vlan.id == 1 && http.request", "-T", "fields",
		"-e", "vlan.id", "-e", "ip.src", "-e", "http.request.method", "-e", "http.request.uri")
	if out != want {
		t.Errorf("tshark on the mirror's capture, with the key log, shows %q; want %q", out, want)
	}

	// The plaintext, without the key log: the HTTP/1.1 request on VLAN
	// 2001 between the real addresses, to the real port, from the client's
	// port with its top bit flipped; nothing of the spliced connection.
	// The port is 443: tshark must try its HTTP heuristic before the
	// port's dissector, TLS.
	flip := func(p uint16) uint16 { return p ^ capture.PlaintextPortFlip }
	plainOpts := []string{"-o", "tcp.try_heuristic_first:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"}
	want = fmt.Sprintf("2001\t02:67:77:6c:62:11\t%s\t%d\t%s\t443\tGET\t%s\t/hello?who=mirror\n",
		netnsClientAddr, flip(bumped.localPort), netnsSrvAddr, netnsWWW)
	out = tshark(t, append([]string{"-r", mirrorPcap, "-Y", "http.request && !tls"}, append(plainOpts, "-T", "fields",
		"-e", "vlan.id", "-e", "eth.src", "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e", "tcp.dstport",
		"-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri")...)...)
	if out != want {
		t.Errorf("tshark on the mirror's plaintext shows\n%q\nwant\n%q", out, want)
	}
	if n := strings.Count(tshark(t, "-r", mirrorPcap, "-Y", fmt.Sprintf("vlan.id == 2001 && (tcp.port == %d || tcp.port == %d)", spliced.localPort, flip(spliced.localPort))), "\n"); n != 0 {
		t.Errorf("%d plaintext packets of the spliced connection", n)
	}
	faults := "vlan.id == 2001 && (_ws.malformed || _ws.expert.severity >= error || tcp.analysis.flags || tcp.checksum.status != 1 || ip.checksum.status != 1)"
	if out := tshark(t, append([]string{"-r", mirrorPcap, "-Y", faults}, plainOpts...)...); out != "" {
		t.Errorf("tshark finds fault with the plaintext packets:\n%s", out)
	}
	if out := tshark(t, "-r", mirrorPcap, "-o", "tls.keylog_file:"+keyLog, "-Y", "vlan.id == 1 && (_ws.malformed || _ws.expert.severity >= error)"); out != "" {
		t.Errorf("tshark finds malformed wire packets:\n%s", out)
	}
	// Follow the synthesized HTTP/1.1 stream: request and response.
	stream := strings.TrimSpace(tshark(t, "-r", mirrorPcap, "-Y", fmt.Sprintf("vlan.id == 2001 && tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.srcport == %d", flip(bumped.localPort)),
		"-T", "fields", "-e", "tcp.stream"))
	if stream == "" {
		t.Fatal("no SYN of the synthesized stream")
	}
	follow := tshark(t, append([]string{"-r", mirrorPcap, "-q", "-z", "follow,tcp,ascii," + stream}, plainOpts...)...)
	if !strings.Contains(follow, "GET /hello?who=mirror HTTP/1.1") || !strings.Contains(follow, "HTTP/1.1 200") || !strings.Contains(follow, bumped.body) {
		t.Errorf("following the synthesized stream %s shows:\n%.3000s", stream, follow)
	}
	// The h2 connection's plaintext is HTTP/2 frames: decoded as such,
	// once taken apart from the wire's TLS on the same port.
	plainPcap := filepath.Join(work, "plain.pcapng")
	tshark(t, "-r", mirrorPcap, "-Y", "vlan.id == 2001", "-w", plainPcap)
	out = tshark(t, "-r", plainPcap, "-d", "tcp.port==443,http2", "-Y",
		fmt.Sprintf("tcp.port == %d && http2.type == 1", flip(bumpedH2.localPort)), "-T", "fields", "-e", "http2.headers.path")
	if !strings.Contains(out, "/hello?who=h2") {
		t.Errorf("the h2 connection's plaintext, decoded as HTTP/2, shows paths %q", out)
	}

	// The files: the same, the plaintext on an interface of its own.
	files := pcapFilesIn(t, pcapDir)
	want = fmt.Sprintf("%s\t%s\tGET\t/hello?who=mirror\n", endpoint, netnsClientAddr)
	wantPlain := fmt.Sprintf("%s-plaintext\t%s\tGET\t/hello?who=mirror\n", endpoint, netnsClientAddr)
	var got, gotPlain []string
	for _, f := range files {
		got = append(got, tshark(t, "-r", f, "-o", "tls.keylog_file:"+keyLog, "-Y", "http.request && tls", "-T", "fields",
			"-e", "frame.interface_name", "-e", "ip.src", "-e", "http.request.method", "-e", "http.request.uri"))
		gotPlain = append(gotPlain, tshark(t, append([]string{"-r", f, "-Y", "http.request && !tls"}, append(plainOpts, "-T", "fields",
			"-e", "frame.interface_name", "-e", "ip.src", "-e", "http.request.method", "-e", "http.request.uri")...)...))
		faults := `frame.interface_name contains "-plaintext" && (_ws.malformed || _ws.expert.severity >= error || tcp.analysis.flags || tcp.checksum.status != 1 || ip.checksum.status != 1)`
		if out := tshark(t, append([]string{"-r", f, "-Y", faults}, plainOpts...)...); out != "" {
			t.Errorf("%s: tshark finds fault with the plaintext packets:\n%s", f, out)
		}
	}
	if strings.Join(got, "") != want {
		t.Errorf("tshark on the pcap files, with the key log, shows %q; want %q", got, want)
	}
	if strings.Join(gotPlain, "") != wantPlain {
		t.Errorf("tshark on the pcap files' plaintext shows %q; want %q", gotPlain, wantPlain)
	}
}
