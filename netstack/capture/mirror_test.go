package capture

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// inNetns runs f on a thread moved into the named network namespace, and
// moves the thread back before letting it go.
func inNetns(t *testing.T, ns string, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and dies with this goroutine.
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestMirrorTAP (privileged): packets of two endpoints reach tcpdump on the
// mirror device, in a namespace of the test's own, as VLAN-tagged frames:
// one VLAN per endpoint, the direction in the MAC addresses.
func TestMirrorTAP(t *testing.T) {
	testenv.RequireRoot(t, "the mirror test creates a network namespace and a TAP device")
	for _, tool := range []string{"ip", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.RequirePrivileged(t, "the mirror test needs "+tool+" (apt-get install iproute2 tcpdump)")
		}
	}
	ns := newNetns(t)
	var c *Capture
	var err error
	inNetns(t, ns, func() { c, err = New(Config{MirrorTAP: "ids0"}) })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	out := filepath.Join(t.TempDir(), "mirror.pcap")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr lockedBuffer
	dump := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "tcpdump", "-i", "ids0", "-n", "--immediate-mode", "-U", "-w", out)
	dump.Stderr = &stderr
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); dump.Wait() }()
	waitFor(t, "tcpdump to listen", func() bool { return strings.Contains(stderr.String(), "listening on") })

	pkts := [][]byte{
		tcpPacket(t, client, dest, []byte("to the destination")),
		tcpPacket(t, dest, client, []byte("back to the client")),
	}
	send := func() {
		c.Packet(epA, 1, false, time.Now().UnixNano(), parsed(t, pkts[0]), pkts[0])
		c.Packet(epA, 1, true, time.Now().UnixNano(), parsed(t, pkts[1]), pkts[1])
		c.Packet(epB, 2, false, time.Now().UnixNano(), parsed(t, pkts[0]), pkts[0])
	}
	send()
	waitFor(t, "the mirror to write 3 packets", func() bool { return c.Stats().Mirror.Packets == 3 })
	waitFor(t, "tcpdump to write them", func() bool {
		st, err := os.Stat(out)
		return err == nil && st.Size() >= 24+3*(16+76) // pcap header, 3 records of 76-byte frames
	})
	cancel()
	dump.Wait()

	read := exec.Command("tcpdump", "-r", out, "-n", "-e", "-tt")
	got, err := read.CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, got)
	}
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	var frames []string
	for _, l := range lines {
		if strings.Contains(l, "vlan") {
			frames = append(frames, l)
		}
	}
	want := []string{
		"02:67:77:6c:62:01 > 02:67:77:6c:62:02, ethertype 802.1Q (0x8100), length 76: vlan 1, p 0, ethertype IPv4 (0x0800), 10.1.2.3.40000 > 192.0.2.7.443",
		"02:67:77:6c:62:02 > 02:67:77:6c:62:01, ethertype 802.1Q (0x8100), length 76: vlan 1, p 0, ethertype IPv4 (0x0800), 192.0.2.7.443 > 10.1.2.3.40000",
		"02:67:77:6c:62:01 > 02:67:77:6c:62:02, ethertype 802.1Q (0x8100), length 76: vlan 2, p 0, ethertype IPv4 (0x0800), 10.1.2.3.40000 > 192.0.2.7.443",
	}
	if len(frames) != len(want) {
		t.Fatalf("tcpdump saw %d frames, want %d:\n%s", len(frames), len(want), got)
	}
	for i, w := range want {
		if !strings.Contains(frames[i], w) {
			t.Errorf("frame %d:\n%s\nwant it to hold\n%s", i, frames[i], w)
		}
	}
	st := c.Stats().Mirror
	if st.VLANs["vpce-00123456789abcdef"] != 1 || st.VLANs["vpce-00fedcba987654321"] != 2 || st.Errors != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

// newNetns creates a network namespace for the test and removes it after.
func newNetns(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("gwlbt-mirror-%08x", rand.Uint32())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("ip netns add: %v %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v %s", ns, err, out)
		}
	})
	return ns
}

// TestMirrorOpenErrorSaysWhatToDo (privileged): a mirror that cannot be
// opened (here: the name is the namespace's loopback, not a TAP device)
// fails New, and the error names the systemd drop-in that lets the
// appliance open one, since the packaged unit's sandbox is the usual cause.
func TestMirrorOpenErrorSaysWhatToDo(t *testing.T) {
	testenv.RequireRoot(t, "the test creates a network namespace")
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.RequirePrivileged(t, "the test needs ip (apt-get install iproute2)")
	}
	ns := newNetns(t)
	var err error
	inNetns(t, ns, func() {
		var c *Capture
		if c, err = New(Config{MirrorTAP: "lo"}); err == nil {
			c.Close()
		}
	})
	if err == nil || !strings.Contains(err.Error(), "cp /usr/share/gwlbproxy/mirror-tap.conf /etc/systemd/system/gwlbproxy.service.d/") {
		t.Errorf("New with an unopenable mirror: %v; want an error naming the drop-in", err)
	}
}

// TestMirrorMTU (privileged): the mirror device's MTU fits the largest
// frame the mirror writes, whether the appliance creates the device or
// opens one made beforehand with the default 1500; a larger MTU is kept.
func TestMirrorMTU(t *testing.T) {
	testenv.RequireRoot(t, "the test creates a network namespace and TAP devices")
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.RequirePrivileged(t, "the test needs ip (apt-get install iproute2)")
	}
	ns := newNetns(t)
	ipn := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		return string(out)
	}
	mtu := func(dev string) int {
		t.Helper()
		f := strings.Fields(ipn("link", "show", dev))
		for i := range f[:len(f)-1] {
			if f[i] == "mtu" {
				var n int
				fmt.Sscan(f[i+1], &n)
				return n
			}
		}
		t.Fatalf("no mtu in %v", f)
		return 0
	}
	ipn("tuntap", "add", "premade0", "mode", "tap")
	ipn("tuntap", "add", "jumbo0", "mode", "tap")
	ipn("link", "set", "jumbo0", "mtu", "16000")
	for dev, want := range map[string]int{"ids0": largeSlot + 4, "premade0": largeSlot + 4, "jumbo0": 16000} {
		var c *Capture
		var err error
		inNetns(t, ns, func() { c, err = New(Config{MirrorTAP: dev}) })
		if err != nil {
			t.Fatal(err)
		}
		if got := mtu(dev); got != want {
			t.Errorf("%s: MTU %d after opening, want %d", dev, got, want)
		}
		c.Close()
	}
}

// TestMirrorVLANsRunOut: once every VLAN ID is taken, a new endpoint's
// packets are counted in NoVLAN, not as errors, with no last_error; once
// an endpoint has been silent for an hour, a new endpoint gets its ID, and
// its frames carry it.
func TestMirrorVLANsRunOut(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := &mirror{name: "test", f: w, frame: make([]byte, frameHeader+largeSlot), vlans: map[uint64]vlanEntry{}, maxVLANs: 3}
	pkt := tcpPacket(t, client, dest, []byte("x"))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	send := func(ep uint64, at time.Duration) {
		m.write(&slot{endpoint: ep, ts: t0 + int64(at), buf: bytes.Clone(pkt), n: len(pkt)})
	}
	send(1, 0)
	send(2, 0)
	send(3, 0)
	send(4, time.Minute) // all taken, none idle
	send(4, 2*time.Minute)
	send(2, 30*time.Minute)
	send(3, 30*time.Minute)
	st := m.stats(newQueue(1))
	if st.NoVLAN != 2 || st.Errors != 0 || st.LastError != "" || st.Packets != 5 {
		t.Errorf("with the VLAN IDs taken: %+v; want no_vlan 2, no errors, no last_error, 5 packets", st)
	}
	send(4, 61*time.Minute) // endpoint 1 silent for 61 minutes: its ID goes to 4
	st = m.stats(newQueue(1))
	if st.NoVLAN != 2 || st.Packets != 6 || st.VLANs[EndpointName(4)] != 1 || len(st.VLANs) != 3 {
		t.Errorf("after endpoint 1 was silent an hour: %+v; want endpoint 4 on VLAN 1", st)
	}
	if _, ok := st.VLANs[EndpointName(1)]; ok {
		t.Errorf("endpoint 1 keeps a VLAN: %v", st.VLANs)
	}
	// A pipe keeps no frame boundaries: the frames are all the same size.
	m.close()
	frames, err := io.ReadAll(r)
	if err != nil || len(frames) != 6*(frameHeader+len(pkt)) {
		t.Fatalf("read %d bytes of frames (%v), want 6 frames", len(frames), err)
	}
	var vlans []uint16
	for f := range slices.Chunk(frames, frameHeader+len(pkt)) {
		vlans = append(vlans, uint16(f[14])<<8|uint16(f[15]))
	}
	if want := []uint16{1, 2, 3, 2, 3, 1}; !slices.Equal(vlans, want) {
		t.Errorf("frames on VLANs %v, want %v", vlans, want)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
