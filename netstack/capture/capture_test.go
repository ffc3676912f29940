package capture

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/netstack"
)

const (
	epA = 0x0123456789abcdef
	epB = 0x0fedcba987654321
)

// tcpPacket is a well-formed IPv4 (or IPv6) TCP packet with payload.
func tcpPacket(t testing.TB, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 1, Ack: 1, ACK: true, PSH: true, Window: 65535}
	var ip gopacket.NetworkLayer
	var ipl gopacket.SerializableLayer
	if src.Addr().Is4() {
		v4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		ip, ipl = v4, v4
	} else {
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		ip, ipl = v6, v6
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ipl, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func parsed(t testing.TB, pkt []byte) netstack.Packet {
	t.Helper()
	et := uint16(netstack.EtherTypeIPv4)
	if pkt[0]>>4 == 6 {
		et = netstack.EtherTypeIPv6
	}
	p, r := netstack.ParsePacket(pkt, et)
	if r != netstack.DropNone {
		t.Fatalf("test packet does not parse: %v", r)
	}
	return p
}

var (
	client = netip.MustParseAddrPort("10.1.2.3:40000")
	dest   = netip.MustParseAddrPort("192.0.2.7:443")
)

func TestParseFilterErrors(t *testing.T) {
	for _, bad := range []string{
		"", ";", "ports", "ports=", "ports=0", "ports=9-8", "ports=70000", "client_cidrs=10.0.0.1/8",
		"dest_cidrs=nope", "dest_cidrs=::ffff:0:0/95", "protocols=tls", "endpoints=vpce-123", "domains=example.com", "ports=80;ports=443",
	} {
		if _, err := ParseFilter(bad); err == nil {
			t.Errorf("ParseFilter(%q) accepted", bad)
		}
	}
}

func TestFilterMatch(t *testing.T) {
	in := tcpPacket(t, client, dest, []byte("x"))
	out := tcpPacket(t, dest, client, []byte("y"))
	pin, pout := parsed(t, in), parsed(t, out)
	for _, tc := range []struct {
		filter string
		want   bool // for both directions
	}{
		{"client_cidrs=10.1.0.0/16", true},
		{"client_cidrs=10.2.0.0/16", false},
		{"client_cidrs=10.1.2.3", true},
		{"dest_cidrs=192.0.2.0/24;ports=443", true},
		{"dest_cidrs=192.0.2.0/24;ports=80", false},
		{"ports=80,400-500", true},
		{"ports=40000", false}, // the client's port is not the destination's
		{"protocols=udp,icmp", false},
		{"protocols=tcp", true},
		{"endpoints=vpce-00123456789abcdef", true},
		{"endpoints=vpce-00fedcba987654321", false},
		{"endpoints=vpce-00fedcba987654321,vpce-00123456789abcdef; client_cidrs=10.0.0.0/8 ;protocols=tcp", true},
		{"client_cidrs=2001:db8::/32", false},
		// IPv4-mapped CIDRs are the IPv4 CIDRs they name, as in the
		// policy and --gwlb-cidrs: kept mapped, they matched no packet.
		{"client_cidrs=::ffff:10.1.0.0/112", true},
		{"dest_cidrs=::ffff:192.0.2.0/120", true},
		{"dest_cidrs=::ffff:198.51.100.0/120", false},
	} {
		f, err := ParseFilter(tc.filter)
		if err != nil {
			t.Fatalf("ParseFilter(%q): %v", tc.filter, err)
		}
		if got := f.match(epA, false, &pin); got != tc.want {
			t.Errorf("%q on the client's packet: %v, want %v", tc.filter, got, tc.want)
		}
		if got := f.match(epA, true, &pout); got != tc.want {
			t.Errorf("%q on the reply: %v, want %v", tc.filter, got, tc.want)
		}
	}
}

// icmpError is an ICMPv4 destination unreachable from src to dst quoting
// the first 28 bytes of quoted (its IP header and 8 bytes of TCP).
func icmpError(t testing.TB, src, dst netip.Addr, quoted []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeHost)}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, icmp, gopacket.Payload(quoted[:28])); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestFilterICMPErrorFollowsItsFlow: an ICMP error matches a filter by
// the addresses of the packet it quotes, not by who sent it: a router's
// "host unreachable" to the client about its packet to dest goes with that
// flow's dest_cidrs and client_cidrs, as does one a router on the client's
// side sends towards dest about a reply.
func TestFilterICMPErrorFollowsItsFlow(t *testing.T) {
	router := netip.MustParseAddr("198.51.100.1")
	clientRouter := netip.MustParseAddr("10.9.9.9")
	// To the client (sent back to the GWLB: out), quoting its packet.
	toClient := parsed(t, icmpError(t, router, client.Addr(), tcpPacket(t, client, dest, nil)))
	// From the client's side (in), quoting a reply it could not deliver.
	fromClientSide := parsed(t, icmpError(t, clientRouter, dest.Addr(), tcpPacket(t, dest, client, nil)))
	for _, tc := range []struct {
		filter string
		want   bool
	}{
		{"dest_cidrs=192.0.2.0/24", true},
		{"dest_cidrs=198.51.100.0/24", false},
		{"client_cidrs=10.1.0.0/16", true},
		{"client_cidrs=10.9.0.0/16", false},
		{"client_cidrs=10.1.2.3;dest_cidrs=192.0.2.7;ports=443;protocols=tcp", true},
	} {
		f, err := ParseFilter(tc.filter)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.match(epA, true, &toClient); got != tc.want {
			t.Errorf("%q on a router's error to the client: %v, want %v", tc.filter, got, tc.want)
		}
		if got := f.match(epA, false, &fromClientSide); got != tc.want {
			t.Errorf("%q on an error from the client's side: %v, want %v", tc.filter, got, tc.want)
		}
	}
}

// TestPacketPathAllocatesNothing: queueing a packet for both outputs, a
// filter checked, allocates nothing, and a full queue drops and counts.
func TestPacketPathAllocatesNothing(t *testing.T) {
	f, _ := ParseFilter("client_cidrs=10.0.0.0/8;ports=443")
	c := &Capture{filters: []Filter{f}, pcapQ: newQueue(64), mirrorQ: newQueue(64)}
	big := make([]byte, 8000)
	copy(big, tcpPacket(t, client, dest, nil))
	pkt := tcpPacket(t, client, dest, []byte("hello"))
	p := parsed(t, pkt)
	drain := func(q *queue) {
		for {
			select {
			case s := <-q.full:
				q.release(s)
			default:
				return
			}
		}
	}
	allocs := testing.AllocsPerRun(1000, func() {
		c.Packet(epA, 7, false, 1, p, pkt)
		c.Packet(epA, 7, false, 1, p, big)
		drain(c.pcapQ)
		drain(c.mirrorQ)
	})
	if allocs != 0 {
		t.Errorf("%v allocations a packet", allocs)
	}
	// Nobody empties the queue: it holds 64, the rest are counted.
	for range 100 {
		c.Packet(epA, 7, false, 1, p, pkt)
	}
	if d := c.pcapQ.dropped.Load(); d != 100-60 { // 60 small slots, 4 large
		t.Errorf("pcap queue dropped %d of 100 with 60 small slots", d)
	}
	if c.mirrorQ.dropped.Load() != c.pcapQ.dropped.Load() {
		t.Errorf("mirror dropped %d, pcap %d", c.mirrorQ.dropped.Load(), c.pcapQ.dropped.Load())
	}
}

// readPcapng reads every packet of the pcapng files, in order, with their
// interface names.
type readPacket struct {
	iface string
	data  []byte
	ts    time.Time
}

func readPcapng(t *testing.T, files ...string) []readPacket {
	t.Helper()
	var out []readPacket
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for {
			data, ci, err := r.ReadPacketData()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			intf, err := r.Interface(ci.InterfaceIndex)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, readPacket{iface: intf.Name, data: data, ts: ci.Timestamp})
		}
		f.Close()
	}
	return out
}

func pcapFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, filePrefix+"*"+fileSuffix))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

// TestPcapFiles: packets of two endpoints with overlapping client
// addresses, both directions, land in one file with an interface per
// endpoint; tshark reads it with no malformed packet, and shows each
// packet's direction and flow cookie.
func TestPcapFiles(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{PcapDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	pkts := [][]byte{
		tcpPacket(t, client, dest, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")),
		tcpPacket(t, dest, client, []byte("HTTP/1.1 200 OK\r\n\r\n")),
		tcpPacket(t, netip.MustParseAddrPort("[2001:db8::5]:40001"), netip.MustParseAddrPort("[2001:db8:1::7]:80"), []byte("v6")),
	}
	c.Packet(epA, 0xdeadbeef, false, now, parsed(t, pkts[0]), pkts[0])
	c.Packet(epA, 0xdeadbeef, true, now+1000, parsed(t, pkts[1]), pkts[1])
	c.Packet(epB, 0x00c0ffee, false, now+2000, parsed(t, pkts[0]), pkts[0]) // the same client behind another endpoint
	c.Packet(epB, 0x00000001, false, now+3000, parsed(t, pkts[2]), pkts[2])
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	files := pcapFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("files %v, want one", files)
	}
	got := readPcapng(t, files...)
	wantIfaces := []string{"vpce-00123456789abcdef", "vpce-00123456789abcdef", "vpce-00fedcba987654321", "vpce-00fedcba987654321"}
	wantData := [][]byte{pkts[0], pkts[1], pkts[0], pkts[2]}
	if len(got) != 4 {
		t.Fatalf("%d packets read back, want 4", len(got))
	}
	for i, p := range got {
		if p.iface != wantIfaces[i] || !bytes.Equal(p.data, wantData[i]) || p.ts.UnixNano() != now+int64(i)*1000 {
			t.Errorf("packet %d: interface %s, %d bytes at %v; want %s, %d bytes at %d", i, p.iface, len(p.data), p.ts.UnixNano(), wantIfaces[i], len(wantData[i]), now+int64(i)*1000)
		}
	}
	st := c.Stats().Pcap
	if st.Packets != 4 || st.Dropped != 0 || st.Errors != 0 || st.Files != 1 || st.DiskBytes <= 0 {
		t.Errorf("stats %+v", st)
	}

	tshark := requireTshark(t)
	out := runTshark(t, tshark, "-r", files[0], "-T", "fields", "-E", "separator=|",
		"-e", "frame.interface_name", "-e", "frame.comment", "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.dstport")
	want := "vpce-00123456789abcdef|flow_cookie=0xdeadbeef|10.1.2.3||443\n" +
		"vpce-00123456789abcdef|flow_cookie=0xdeadbeef|192.0.2.7||40000\n" +
		"vpce-00fedcba987654321|flow_cookie=0x00c0ffee|10.1.2.3||443\n" +
		"vpce-00fedcba987654321|flow_cookie=0x00000001||2001:db8::5|80\n"
	if out != want {
		t.Errorf("tshark reads\n%s\nwant\n%s", out, want)
	}
	// The direction: inbound (1) from the GWLB, outbound (2) back to it.
	for dir, want := range map[string]string{"1": "1\n3\n4\n", "2": "2\n"} {
		out := runTshark(t, tshark, "-r", files[0], "-Y", "frame.packet_flags_direction == "+dir, "-T", "fields", "-e", "frame.number")
		if out != want {
			t.Errorf("packets of direction %s: %q, want %q", dir, out, want)
		}
	}
	// Nothing malformed, no expert error.
	if out := runTshark(t, tshark, "-r", files[0], "-Y", "_ws.malformed || _ws.expert.severity >= error"); out != "" {
		t.Errorf("tshark finds malformed packets:\n%s", out)
	}
}

func requireTshark(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("tshark")
	if err != nil {
		testenv.RequirePrivileged(t, "tshark is not installed (apt-get install tshark)")
	}
	return p
}

func runTshark(t *testing.T, tshark string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tshark, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// TestPcapRotationAndCap: with small files and a small cap, the files
// rotate by size, the directory never holds more than the cap (checked
// while writing, not only at the end), files of an earlier run count
// against it and go first, and the newest packets are the ones kept.
func TestPcapRotationAndCap(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, filePrefix+"19990101T000000.000000Z-000001"+fileSuffix)
	if err := os.WriteFile(old, make([]byte, 100<<10), 0o640); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "keep-me.txt") // not ours: never deleted
	os.WriteFile(other, []byte("x"), 0o640)
	const rotate, maxBytes = 64 << 10, 256 << 10
	c, err := New(Config{PcapDir: dir, RotateBytes: rotate, MaxBytes: maxBytes, QueuePackets: 64})
	if err != nil {
		t.Fatal(err)
	}
	dirBytes := func() int64 {
		var n int64
		for _, f := range pcapFiles(t, dir) {
			if st, err := os.Stat(f); err == nil {
				n += st.Size()
			}
		}
		return n
	}
	const n = 2000
	payload := make([]byte, 1000)
	var last []byte
	for i := range n {
		copy(payload, strconv.Itoa(i)+" ")
		pkt := tcpPacket(t, client, dest, payload)
		// Wait for room rather than drop: this test is about the files.
		for c.pcapQ.dropped.Load() > 0 || len(c.pcapQ.small) == 0 {
			c.pcapQ.dropped.Store(0)
			time.Sleep(time.Millisecond)
		}
		c.Packet(epA, uint32(i), false, time.Now().UnixNano(), parsed(t, pkt), pkt)
		last = pkt
		if i%100 == 0 {
			if b := dirBytes(); b > maxBytes {
				t.Fatalf("after %d packets the files take %d bytes, over the cap of %d", i, b, maxBytes)
			}
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if b := dirBytes(); b > maxBytes {
		t.Fatalf("the files take %d bytes, over the cap of %d", b, maxBytes)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the earlier run's file is still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file not ours was touched: %v", err)
	}
	files := pcapFiles(t, dir)
	for _, f := range files {
		if st, _ := os.Stat(f); st.Size() > rotate {
			t.Errorf("%s has %d bytes, over --pcap-rotate-bytes %d", f, st.Size(), rotate)
		}
	}
	got := readPcapng(t, files...)
	if len(got) == 0 || !bytes.Equal(got[len(got)-1].data, last) {
		t.Fatalf("the last packet is not the newest written (%d packets kept)", len(got))
	}
	// What is kept is the newest, in order, without a gap.
	for i := 1; i < len(got); i++ {
		a, _ := strconv.Atoi(strings.Fields(string(got[i-1].data[40:50]))[0])
		b, _ := strconv.Atoi(strings.Fields(string(got[i].data[40:50]))[0])
		if b != a+1 {
			t.Fatalf("packet %d follows %d in the files kept", b, a)
		}
	}
	st := c.Stats().Pcap
	if st.Rotations < 20 || st.FilesDeleted < 15 || st.Packets != n || st.Files != len(files) {
		t.Errorf("stats %+v with %d files", st, len(files))
	}
	t.Logf("%d files, %d packets kept of %d, stats %+v", len(files), len(got), n, st)
	if tshark, err := exec.LookPath("tshark"); err == nil {
		for _, f := range files {
			if out := runTshark(t, tshark, "-r", f, "-Y", "_ws.malformed || _ws.expert.severity >= error"); out != "" {
				t.Errorf("%s: tshark finds malformed packets:\n%s", f, out)
			}
		}
	}
}

// TestPcapRotationCountsInterfaces: interface blocks count against
// --pcap-rotate-bytes. With many endpoints of a few small packets each,
// most of a file is interface blocks (about 200 bytes each, one per
// endpoint per file); every file still stays within the rotation size,
// and every packet is kept.
func TestPcapRotationCountsInterfaces(t *testing.T) {
	dir := t.TempDir()
	const rotate = MinRotateBytes
	c, err := New(Config{PcapDir: dir, RotateBytes: rotate, MaxBytes: 1 << 30, QueuePackets: 64})
	if err != nil {
		t.Fatal(err)
	}
	const endpoints, each = 1000, 3
	pkt := tcpPacket(t, client, dest, []byte("x"))
	p := parsed(t, pkt)
	for i := range endpoints * each {
		for c.pcapQ.dropped.Load() > 0 || len(c.pcapQ.small) == 0 {
			c.pcapQ.dropped.Store(0)
			time.Sleep(time.Millisecond)
		}
		c.Packet(uint64(0x1000+i/each), uint32(i), false, time.Now().UnixNano(), p, pkt)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	files := pcapFiles(t, dir)
	if len(files) < 3 {
		t.Fatalf("%d files: want the test to rotate a few times", len(files))
	}
	for _, f := range files {
		if st, _ := os.Stat(f); st.Size() > rotate {
			t.Errorf("%s has %d bytes, over --pcap-rotate-bytes %d", f, st.Size(), rotate)
		}
	}
	if got := readPcapng(t, files...); len(got) != endpoints*each {
		t.Errorf("%d packets in the files, want %d", len(got), endpoints*each)
	}
}

// TestPcapRotateAge: a file older than --pcap-rotate-age is finished, and
// the next packet starts another.
func TestPcapRotateAge(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{PcapDir: dir, RotateAge: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pkt := tcpPacket(t, client, dest, []byte("a"))
	c.Packet(epA, 1, false, time.Now().UnixNano(), parsed(t, pkt), pkt)
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Pcap.Rotations == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no rotation by age within 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Packet(epA, 1, false, time.Now().UnixNano(), parsed(t, pkt), pkt)
	c.Close()
	if files := pcapFiles(t, dir); len(files) != 2 {
		t.Errorf("files %v, want two", files)
	}
}

// TestPcapFilterSelects: with filters, only matching packets are written;
// the mirror is not subject to them.
func TestPcapFilterSelects(t *testing.T) {
	dir := t.TempDir()
	f1, _ := ParseFilter("endpoints=vpce-00fedcba987654321")
	f2, _ := ParseFilter("ports=80")
	c, err := New(Config{PcapDir: dir, Filters: []Filter{f1, f2}})
	if err != nil {
		t.Fatal(err)
	}
	to443 := tcpPacket(t, client, dest, []byte("a"))
	to80 := tcpPacket(t, client, netip.AddrPortFrom(dest.Addr(), 80), []byte("b"))
	from80 := tcpPacket(t, netip.AddrPortFrom(dest.Addr(), 80), client, []byte("c"))
	now := time.Now().UnixNano()
	c.Packet(epA, 1, false, now, parsed(t, to443), to443)  // neither
	c.Packet(epA, 2, false, now, parsed(t, to80), to80)    // ports=80
	c.Packet(epA, 2, true, now, parsed(t, from80), from80) // its reply
	c.Packet(epB, 3, false, now, parsed(t, to443), to443)  // the endpoint
	c.Close()
	got := readPcapng(t, pcapFiles(t, dir)...)
	if len(got) != 3 || !bytes.Equal(got[0].data, to80) || !bytes.Equal(got[1].data, from80) || got[2].iface != "vpce-00fedcba987654321" {
		t.Errorf("%d packets written: %+v", len(got), got)
	}
}

func TestKeyLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.log")
	os.WriteFile(path, []byte("# earlier\n"), 0o644) // readable by all: made private
	k, err := OpenKeyLog(path)
	if err != nil {
		t.Fatal(err)
	}
	k.Write([]byte("CLIENT_RANDOM aa bb\n"))
	k.Close()
	if n, err := k.Write([]byte("late\n")); n != 5 || err != nil {
		t.Errorf("a write after Close: %d, %v; want it dropped quietly", n, err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if b, _ := os.ReadFile(path); string(b) != "# earlier\nCLIENT_RANDOM aa bb\n" {
		t.Errorf("key log holds %q", b)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{PcapDir: "x", RotateBytes: 1000},
		{PcapDir: "x", RotateBytes: 1 << 20, MaxBytes: 1 << 19},
		{PcapDir: "x", RotateAge: time.Millisecond},
		{MirrorTAP: "a-very-long-device-name"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := (Config{PcapDir: "x"}).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// BenchmarkPacket is the packet path's share of the capture: a filter
// checked and a copy queued for the pcap writer, which writes on its own
// goroutine (what it cannot keep up with is dropped and counted). It must
// not allocate.
func BenchmarkPacket(b *testing.B) {
	f, _ := ParseFilter("client_cidrs=10.0.0.0/8;ports=443")
	c, err := New(Config{PcapDir: b.TempDir(), Filters: []Filter{f}, RotateBytes: 16 << 20, MaxBytes: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pkt := tcpPacket(b, client, dest, make([]byte, 1400))
	p := parsed(b, pkt)
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Packet(epA, uint32(i), false, int64(i), p, pkt)
	}
	b.StopTimer()
	st := c.Stats().Pcap
	b.ReportMetric(float64(st.Dropped)/float64(b.N), "dropped/op")
}
