package appliance

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/net/icmp"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDrain: on shutdown health turns 503 at once, an open connection keeps
// working, and the appliance stops as soon as it ends, before the timeout.
func TestDrain(t *testing.T) {
	r := newRig(t, nil, nil)
	admin := "http://" + r.app.adminLn.Addr().String()
	if code, body := httpGet(t, admin+"/"); code != 200 || !strings.Contains(body, "serving") {
		t.Fatalf("health %d %q, want 200", code, body)
	}
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	r.cancel()
	deadline := time.Now().Add(2 * time.Second)
	for {
		code, _ := httpGet(t, admin+"/")
		if code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health still %d after shutdown began", code)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	must(c.Write([]byte("still here")))(t)
	got := make([]byte, 10)
	must(io.ReadFull(c, got))(t)
	if string(got) != "still here" {
		t.Fatalf("echo during drain %q", got)
	}
	select {
	case <-r.done:
		t.Fatal("appliance stopped while a flow was open")
	case <-time.After(200 * time.Millisecond):
	}
	start := time.Now()
	c.Close()
	select {
	case <-r.done:
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("stopping took %v after the last flow ended", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("appliance did not stop after its last flow ended")
	}
	r.done <- nil // for the cleanup's wait
}

// TestAdminEndpoints: /metrics and /stats expose the counters, and the CA
// is served in PEM and DER.
func TestAdminEndpoints(t *testing.T) {
	r := newRig(t, nil, nil)
	admin := "http://" + r.app.adminLn.Addr().String()
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	c.Close()
	code, metrics := httpGet(t, admin+"/metrics")
	for _, want := range []string{"gwlbproxy_geneve_packets_in_total ", `gwlbproxy_drops_total{reason="truncated"} 0`,
		`gwlbproxy_endpoint_flows{endpoint="vpce-00123456789abcdef"} `, "gwlbproxy_stacks 1"} {
		if code != 200 || !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if st := r.stats(); st.Netstack.PacketsIn == 0 || st.Netstack.PacketsOut == 0 || st.Netstack.Flows == 0 {
		t.Errorf("/stats counters %+v", st.Netstack)
	}
	_, pemText := httpGet(t, admin+"/ca.pem")
	blk, _ := pem.Decode([]byte(pemText))
	if blk == nil {
		t.Fatalf("/ca.pem is not PEM: %q", pemText)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !cert.IsCA {
		t.Fatalf("/ca.pem: %v (CA %v)", err, cert != nil && cert.IsCA)
	}
	_, der := httpGet(t, admin+"/ca.crt")
	if !bytes.Equal([]byte(der), blk.Bytes) {
		t.Error("/ca.crt differs from /ca.pem")
	}
	if code, page := httpGet(t, admin+"/ca/"); code != 200 || !strings.Contains(page, "ca.pem") {
		t.Errorf("/ca/ page: %d", code)
	}
}

// TestCAPersists: the CA created on first start is reused on the next.
func TestCAPersists(t *testing.T) {
	dir := t.TempDir()
	o := DefaultOptions()
	o.StateDir = dir
	first := must(LoadCA(&o))(t)
	second := must(LoadCA(&o))(t)
	if first.Fingerprint() != second.Fingerprint() {
		t.Fatal("a second start made a new CA")
	}
	fi := must(os.Stat(filepath.Join(dir, "ca-key.pem")))(t)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode().Perm())
	}
}

// TestMidFlowSegmentGetsRST: after a GWLB rebalance the appliance receives
// segments of a connection it never saw; it answers with a RST under the
// received header so the client fails fast instead of hanging.
func TestMidFlowSegmentGetsRST(t *testing.T) {
	r := newRig(t, nil, nil)
	dst := netip.AddrPortFrom(r.net.server(3), 443)
	gotRST := make(chan bool, 4)
	r.client.SetTap(func(inner []byte) bool {
		pkt := gopacket.NewPacket(inner, layers.LayerTypeIPv4, gopacket.Default)
		if tcp, ok := pkt.TransportLayer().(*layers.TCP); ok && tcp.SrcPort == 443 && tcp.DstPort == 50000 {
			gotRST <- tcp.RST
			return true
		}
		return false
	})
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: clientV4.AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: 50000, DstPort: 443, ACK: true, PSH: true, Seq: 1000, Ack: 2000, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload("mid-flow")); err != nil {
		t.Fatal(err)
	}
	must(0, r.client.Send(buf.Bytes()))(t)
	select {
	case rst := <-gotRST:
		if !rst {
			t.Fatal("the answer to a mid-flow segment is not a RST")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no answer to a mid-flow segment")
	}
	if st := r.sim.Stats(); st.HeaderMismatch != 0 || st.UnknownFlow != 0 {
		t.Fatalf("simulator stats %+v", st)
	}
}

// TestICMPEcho: a ping through the appliance gets the destination's real
// answer, with the client's identifier and sequence, and a record.
func TestICMPEcho(t *testing.T) {
	if c, err := icmp.ListenPacket("udp4", "0.0.0.0"); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("this host allows no unprivileged ICMP sockets (net.ipv4.ping_group_range): %v; "+
			`as root: echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range`, err))
	} else {
		c.Close()
	}
	r := newRig(t, func(o *Options) { o.IdleTimeout = time.Second }, nil)
	dst := r.net.server(3)
	replies := make(chan [2]uint16, 4)
	r.client.SetTap(func(inner []byte) bool {
		if len(inner) >= 28 && inner[9] == 1 && inner[20] == 0 { // ICMP echo reply
			replies <- [2]uint16{binary.BigEndian.Uint16(inner[24:]), binary.BigEndian.Uint16(inner[26:])}
			return true
		}
		return false
	})
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: clientV4.AsSlice(), DstIP: dst.AsSlice()}
	for seq := uint16(1); seq <= 2; seq++ {
		buf := gopacket.NewSerializeBuffer()
		echo := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 4242, Seq: seq}
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, echo, gopacket.Payload("ping!")); err != nil {
			t.Fatal(err)
		}
		must(0, r.client.Send(buf.Bytes()))(t)
		select {
		case got := <-replies:
			if got != [2]uint16{4242, seq} {
				t.Fatalf("echo reply id/seq %v, want 4242/%d", got, seq)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("no echo reply")
		}
	}
	recs := r.records(func(rs []records.Record) bool { return findRecord(rs, "icmp", netip.AddrPortFrom(dst, 0)) != nil })
	if rec := findRecord(recs, "icmp", netip.AddrPortFrom(dst, 0)); rec == nil || rec.Packets != 2 {
		t.Fatalf("icmp record %+v, want 2 packets", rec)
	}
}

// waitHealth polls the health check until it answers code with a body
// containing want, and returns the body.
func waitHealth(t *testing.T, r *rig, code int, want string) string {
	t.Helper()
	admin := "http://" + r.app.adminLn.Addr().String() + "/"
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, body := httpGet(t, admin)
		if got == code && strings.Contains(body, want) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("health %d %q, want %d with %q", got, body, code, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHealthBrokenGeneve: once the GENEVE readers stop outside a drain, the
// health check fails and says why, and /stats and /metrics show it.
func TestHealthBrokenGeneve(t *testing.T) {
	r := newRig(t, nil, nil)
	waitHealth(t, r, 200, "serving")
	r.app.netstack.Close() // the readers stop as on a fatal socket error
	body := waitHealth(t, r, 503, "broken: GENEVE readers stopped")
	if strings.Contains(body, "draining") {
		t.Errorf("health body %q", body)
	}
	if st := r.stats(); st.Draining || len(st.Broken) != 1 {
		t.Errorf("/stats draining %v, broken %q", st.Draining, st.Broken)
	}
	_, metrics := httpGet(t, "http://"+r.app.adminLn.Addr().String()+"/metrics")
	if !strings.Contains(metrics, "\ngwlbproxy_broken 1\n") {
		t.Error("/metrics lacks gwlbproxy_broken 1")
	}
}

// TestHealthBrokenRecordStall: an access log nobody reads (a full pipe, as
// stdout can be) fails the health check once records have waited for
// longer than RecordStall, while traffic keeps flowing; when the reader
// comes back, the records arrive and health passes again.
func TestHealthBrokenRecordStall(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "access.fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("no FIFO here: %v", err)
	}
	// The read end, opened first so that the appliance's open does not wait
	// for one; its pipe made as small as Linux allows, so a few records fill it.
	rd, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	if _, err := unix.FcntlInt(rd.Fd(), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Logf("F_SETPIPE_SZ: %v (the default 64 KiB pipe takes more records)", err)
	}
	var lines []string
	reading := make(chan struct{})
	var once sync.Once
	drain := func() {
		once.Do(func() {
			go func() {
				defer close(reading)
				sc := bufio.NewScanner(rd)
				for sc.Scan() {
					lines = append(lines, sc.Text())
				}
			}()
		})
	}
	r := newRig(t, func(o *Options) {
		o.AccessLog = fifo
		o.RecordStall = 300 * time.Millisecond
	}, nil)
	t.Cleanup(drain) // before the rig stops, which writes out the queue
	waitHealth(t, r, 200, "serving")
	const n = 2000 // 64 KiB of pipe holds a few hundred
	for i := range n {
		r.app.records.Write(&records.Record{Kind: "tcp", Packets: int64(i)})
	}
	waitHealth(t, r, 503, "access records waiting")
	st := r.stats()
	if st.Records.LagSeconds < 0.3 || st.Records.Queued == 0 || st.Records.Dropped != 0 {
		t.Errorf("/stats records %+v while the pipe is full", st.Records)
	}
	// The data path goes on regardless: a connection through the appliance.
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	must(c.Write([]byte("ping")))(t)
	must(io.ReadFull(c, make([]byte, 4)))(t)
	c.Close()

	drain()
	waitHealth(t, r, 200, "serving")
	r.cancel()
	<-r.done
	r.done <- nil // for the cleanup's wait
	<-reading     // the appliance closed the write end
	if len(lines) < n+1 {
		t.Fatalf("%d lines through the pipe, want %d records and the flow's", len(lines), n+1)
	}
}

// TestHealthBrokenRecordSink: an access log whose every write fails (a full
// disk) fails the health check after RecordStall, naming the error.
func TestHealthBrokenRecordSink(t *testing.T) {
	if f, err := os.OpenFile("/dev/full", os.O_WRONLY|os.O_APPEND, 0); err != nil {
		t.Skipf("no /dev/full here: %v", err)
	} else {
		f.Close()
	}
	r := newRig(t, func(o *Options) {
		o.AccessLog = "/dev/full"
		o.RecordStall = 200 * time.Millisecond
	}, nil)
	r.app.records.Write(&records.Record{Kind: "tcp"})
	waitHealth(t, r, 503, "no space left on device")
	if st := r.stats(); st.Records.SinkErrors != 1 || st.Records.Written != 0 || st.Records.Failed != 1 || !strings.Contains(st.Broken[0], "sink failing") {
		t.Errorf("/stats records %+v, broken %q", st.Records, st.Broken)
	}
}

// TestRecordsMetricsAndExitFlush: /metrics and /stats count the records
// written, and the records still queued when the appliance stops all reach
// the access log before it exits.
func TestRecordsMetricsAndExitFlush(t *testing.T) {
	r := newRig(t, nil, nil)
	admin := "http://" + r.app.adminLn.Addr().String()
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	c.Close()
	r.records(func(rs []records.Record) bool { return findRecord(rs, "tcp", srv) != nil })
	_, metrics := httpGet(t, admin+"/metrics")
	for _, want := range []string{"\ngwlbproxy_records_written_total 1\n", "\ngwlbproxy_records_dropped_total 0\n",
		"\ngwlbproxy_records_queued ", "\ngwlbproxy_record_sink_errors_total 0\n", "\ngwlbproxy_records_lag_seconds ",
		"\ngwlbproxy_broken 0\n"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
	if st := r.stats(); st.Records.Written != 1 || len(st.Broken) != 0 {
		t.Errorf("/stats records %+v, broken %q", st.Records, st.Broken)
	}

	const n = 20000
	for i := range n {
		r.app.records.Write(&records.Record{Kind: "udp", Error: fmt.Sprint(i)})
	}
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("appliance did not stop")
	}
	r.done <- nil
	recs := r.records(func([]records.Record) bool { return true })
	if len(recs) != n+1 {
		t.Fatalf("%d records in the access log after exit, want %d", len(recs), n+1)
	}
	for i, rec := range recs[1:] {
		if rec.Error != fmt.Sprint(i) {
			t.Fatalf("record %d is %q: out of order", i, rec.Error)
		}
	}
	if st := r.app.records.Stats(); st.Dropped != 0 || st.Written != n+1 {
		t.Fatalf("records %+v", st)
	}
}
