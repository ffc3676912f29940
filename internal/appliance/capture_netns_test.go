package appliance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestNetnsCaptureMirror: the real appliance, started with --mirror-tap,
// --pcap-dir and --tls-keylog between namespaces, serves a real curl's
// bumped HTTPS request; tcpdump on the mirror device (in the appliance's
// namespace) sees its packets, tagged with the endpoint's VLAN, and tshark,
// with the key log, decrypts the request both from what tcpdump wrote and
// from the appliance's own pcap files. /stats counts what was mirrored and
// written, and nothing dropped.
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
		"--tls-keylog", keyLog, "--pcap-dir", pcapDir, "--mirror-tap", "ids0")
	if !strings.Contains(app.logs(), "--tls-keylog: the secrets of every bumped TLS connection") {
		t.Errorf("no warning at start that the key log holds secrets:\n%s", app.logs())
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
	r := curl(tp.client, "--http1.1", "--cacert", caFile, "--resolve", netnsWWW+":443:"+netnsSrvAddr,
		"https://"+netnsWWW+"/hello?who=mirror")
	if r.code != 0 || r.status != 200 {
		t.Fatalf("curl through the appliance: %s", r)
	}
	accessRecs.await(t, "the bumped request", func(rec *records.Record) bool {
		return rec.Kind == "http" && rec.ClientPort == r.localPort && rec.Action == "bump" && rec.Status == 200
	})

	// /stats: mirrored and written, nothing dropped, the endpoint on VLAN 1.
	var st stats
	waitFor(t, "the capture to settle", func() string {
		res := inNS(tp.app, "curl", "-sS", "--max-time", "5", netnsAdmin+"/stats")
		var now stats
		if err := json.Unmarshal([]byte(res.stdout), &now); err != nil || now.Capture == nil || now.Capture.Pcap == nil || now.Capture.Mirror == nil {
			return fmt.Sprintf("/stats without capture: %s", res)
		}
		prev := st
		st = now
		if prev.Capture == nil || now.Capture.Pcap.Packets == 0 || now.Capture.Pcap.Packets != prev.Capture.Pcap.Packets ||
			now.Capture.Mirror.Packets != prev.Capture.Mirror.Packets {
			time.Sleep(200 * time.Millisecond)
			return fmt.Sprintf("still moving: %+v %+v", *now.Capture.Pcap, *now.Capture.Mirror)
		}
		return ""
	})
	pc, mc := st.Capture.Pcap, st.Capture.Mirror
	if pc.Dropped != 0 || pc.Errors != 0 || mc.Dropped != 0 || mc.Errors != 0 || mc.Packets != pc.Packets || mc.Device != "ids0" || len(mc.VLANs) != 1 {
		t.Errorf("capture stats: pcap %+v, mirror %+v", *pc, *mc)
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
	want := fmt.Sprintf("1\t%s\tGET\t/hello?who=mirror\n", netnsClientAddr)
	out := tshark(t, "-r", mirrorPcap, "-o", "tls.keylog_file:"+keyLog, "-Y", "http.request", "-T", "fields",
		"-e", "vlan.id", "-e", "ip.src", "-e", "http.request.method", "-e", "http.request.uri")
	if out != want {
		t.Errorf("tshark on the mirror's capture, with the key log, shows %q; want %q", out, want)
	}
	// The mirror carried every packet the pcap files hold, both ways.
	if out := tshark(t, "-r", mirrorPcap, "-Y", "vlan.id == 1 && tcp", "-T", "fields", "-e", "frame.number"); strings.Count(out, "\n") < 10 {
		t.Errorf("the mirror's capture holds %d TCP packets on VLAN 1, want the whole connection", strings.Count(out, "\n"))
	}

	files := pcapFilesIn(t, pcapDir)
	want = fmt.Sprintf("%s\t%s\tGET\t/hello?who=mirror\n", endpoint, netnsClientAddr)
	var got []string
	for _, f := range files {
		out := tshark(t, "-r", f, "-o", "tls.keylog_file:"+keyLog, "-Y", "http.request", "-T", "fields",
			"-e", "frame.interface_name", "-e", "ip.src", "-e", "http.request.method", "-e", "http.request.uri")
		got = append(got, out)
	}
	if strings.Join(got, "") != want {
		t.Errorf("tshark on the pcap files, with the key log, shows %q; want %q", got, want)
	}
}
