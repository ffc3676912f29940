package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// The pump tests run on loopback addresses of their own.
var (
	testSimAddr = netip.MustParseAddr("127.86.81.2")
	testAppAddr = netip.MustParseAddr("127.86.81.1")
	testClient  = netip.MustParseAddr("198.18.50.2")
	testDest    = netip.MustParseAddr("198.18.2.3")
)

// packetPair returns two ends of a datagram socket pair: like a TUN device
// without packet information, each read returns exactly one packet.
func packetPair(t *testing.T) (dev *os.File, peer int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	dev = os.NewFile(uintptr(fds[0]), "fake-tun")
	t.Cleanup(func() { dev.Close(); unix.Close(fds[1]) })
	// A bounded wait on the test's end, so a missing reply fails the test
	// instead of hanging it.
	tv := unix.Timeval{Sec: 5}
	if err := unix.SetsockoptTimeval(fds[1], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return dev, fds[1]
}

// packetDevice is a device of one packet per read and per write, over a
// file each read of which returns one packet, as a TUN device without
// offloads does.
type packetDevice struct{ f *os.File }

func (packetDevice) BatchSize() int { return 1 }

func (d packetDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.f.Read(bufs[0][offset:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

func (d packetDevice) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		if _, err := d.f.Write(b[offset:]); err != nil {
			return i, err
		}
	}
	return len(bufs), nil
}

// udpPacket builds an IPv4/UDP packet. The simulator parses only headers,
// so the UDP checksum stays zero (allowed for IPv4).
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8], b[9] = 64, 17
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ipChecksum(b[:20]))
	binary.BigEndian.PutUint16(b[20:], src.Port())
	binary.BigEndian.PutUint16(b[22:], dst.Port())
	binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload)))
	copy(b[28:], payload)
	return b
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// reflect turns an IPv4/UDP packet into its reply: addresses and ports swapped.
func reflectPacket(in []byte) []byte {
	out := append([]byte(nil), in...)
	copy(out[12:16], in[16:20])
	copy(out[16:20], in[12:16])
	ihl := int(in[0]&0x0f) * 4
	copy(out[ihl:ihl+2], in[ihl+2:ihl+4])
	copy(out[ihl+2:ihl+4], in[ihl:ihl+2])
	return out
}

// fakeAppliance answers each GENEVE datagram with its inner packet
// reflected, under the received header passed through tamper, sent to the
// simulator's listen port as the GWLB requires. It records the outer source
// ports it saw.
type fakeAppliance struct {
	conn    *net.UDPConn
	sim     netip.AddrPort
	tamper  atomic.Pointer[func(hdr []byte)]
	reply   atomic.Bool
	got     chan netstack.Header
	srcPort chan uint16
	// ports are sockets bound to the ports replies leave from: the port
	// each datagram came from, as the appliance keeps the outer ports.
	ports map[uint16]*net.UDPConn // only serve's goroutine uses it
}

func newFakeAppliance(t *testing.T, sim netip.AddrPort) *fakeAppliance {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(testAppAddr, 0)))
	if err != nil {
		t.Fatalf("fake appliance: %v", err)
	}
	return startFake(t, c, sim)
}

// startFake serves a fake appliance on c.
func startFake(t *testing.T, c *net.UDPConn, sim netip.AddrPort) *fakeAppliance {
	a := &fakeAppliance{conn: c, sim: sim, got: make(chan netstack.Header, 64), srcPort: make(chan uint16, 64),
		ports: map[uint16]*net.UDPConn{}}
	a.reply.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.serve()
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
		for _, pc := range a.ports {
			pc.Close()
		}
	})
	return a
}

func (a *fakeAppliance) addr() netip.AddrPort { return a.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (a *fakeAppliance) serve() {
	buf := make([]byte, 65536)
	out := make([]byte, 65536)
	for {
		n, from, err := a.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		h, reason := netstack.ParseHeader(buf[:n])
		if reason != netstack.DropNone {
			continue
		}
		select {
		case a.got <- h:
		default:
		}
		select {
		case a.srcPort <- from.Port():
		default:
		}
		if !a.reply.Load() {
			continue
		}
		m := copy(out, buf[:h.Len])
		if fn := a.tamper.Load(); fn != nil {
			(*fn)(out[:m])
		}
		m += copy(out[m:], reflectPacket(buf[h.Len:n]))
		_, _ = a.replySocket(from.Port()).WriteToUDPAddrPort(out[:m], a.sim)
	}
}

// replySocket returns a socket bound to the appliance's address and port,
// or its GENEVE socket if port cannot be bound.
func (a *fakeAppliance) replySocket(port uint16) *net.UDPConn {
	if c := a.ports[port]; c != nil {
		return c
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.addr().Addr(), port)))
	if err != nil {
		return a.conn // the simulator counts it as a wrong source port
	}
	a.ports[port] = c
	return c
}

type rig struct {
	sim  *gwlbsim.Sim
	app  *fakeAppliance
	pump *pump
	peer int
	done chan error
}

func newPumpRig(t *testing.T) *rig {
	t.Helper()
	app := newFakeAppliance(t, netip.AddrPortFrom(testSimAddr, netstack.GenevePort))
	sim, err := gwlbsim.New(gwlbsim.Config{Addr: testSimAddr, Appliance: app.addr(), Senders: 4})
	if err != nil {
		t.Fatalf("starting the simulator: %v", err)
	}
	dev, peer := packetPair(t)
	ep := sim.Endpoint(0x0123456789abcdef0, 0x0a1b2c3d4e5f6071)
	p := newPump(packetDevice{dev}, ep)
	r := &rig{sim: sim, app: app, pump: p, peer: peer, done: make(chan error, 1)}
	go func() { r.done <- p.readLoop() }()
	t.Cleanup(func() {
		dev.Close()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("readLoop: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("readLoop did not stop when the device was closed")
		}
		sim.Close()
	})
	return r
}

func (r *rig) write(t *testing.T, pkt []byte) {
	t.Helper()
	if _, err := unix.Write(r.peer, pkt); err != nil {
		t.Fatalf("writing to the fake device: %v", err)
	}
}

func (r *rig) read(t *testing.T) []byte {
	t.Helper()
	return readPeer(t, r.peer)
}

// TestPumpRoundTrip: a packet from the device travels as GENEVE with the
// endpoint's options from a sender port (not 6081), and the reply under the
// same header comes back out of the device, byte for byte.
func TestPumpRoundTrip(t *testing.T) {
	r := newPumpRig(t)
	src, dst := netip.AddrPortFrom(testClient, 40000), netip.AddrPortFrom(testDest, 53)
	for i := range 3 {
		pkt := udpPacket(src, dst, []byte{'p', byte(i)})
		r.write(t, pkt)
		got := r.read(t)
		if want := reflectPacket(pkt); !bytes.Equal(got, want) {
			t.Fatalf("reply %x, want %x", got, want)
		}
	}
	h := <-r.app.got
	if h.Endpoint != 0x0123456789abcdef0 || h.Attachment != 0x0a1b2c3d4e5f6071 || h.Protocol != netstack.EtherTypeIPv4 {
		t.Errorf("GENEVE header %+v: want the configured endpoint and attachment, IPv4", h)
	}
	if p := <-r.app.srcPort; p == netstack.GenevePort {
		t.Errorf("datagram sent from port %d: the simulator must send from its sender ports", p)
	}
	// The pump counts a reply after the device took it: wait for the count.
	want := pumpStats{FromDevice: 3, ToDevice: 3}
	ps := waitStats(r.pump, want)
	st := r.sim.Stats()
	if st.Sent != 3 || st.Received != 3 || st.HeaderMismatch != 0 {
		t.Errorf("simulator stats %+v: want 3 sent, 3 received", st)
	}
	if ps != want {
		t.Errorf("pump stats %+v: want 3 from and 3 to the device", ps)
	}
}

// TestPumpDropsTamperedReplies: a reply whose header differs from the
// flow's never reaches the device, and an unparsable packet from the device
// is counted without stopping the pump.
func TestPumpDropsTamperedReplies(t *testing.T) {
	r := newPumpRig(t)
	tamper := func(hdr []byte) { hdr[len(hdr)-1] ^= 0xff } // the flow cookie's last byte
	r.app.tamper.Store(&tamper)
	r.write(t, []byte{0x45, 0, 0}) // truncated IPv4
	src, dst := netip.AddrPortFrom(testClient, 40001), netip.AddrPortFrom(testDest, 53)
	r.write(t, udpPacket(src, dst, []byte("x")))
	deadline := time.Now().Add(5 * time.Second)
	for r.sim.Stats().HeaderMismatch == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := r.sim.Stats(); st.HeaderMismatch != 1 || st.Received != 0 {
		t.Fatalf("simulator stats %+v: want the tampered reply counted as a mismatch", st)
	}
	r.app.tamper.Store(nil)
	pkt := udpPacket(src, dst, []byte("y"))
	r.write(t, pkt)
	if got, want := r.read(t), reflectPacket(pkt); !bytes.Equal(got, want) {
		t.Fatalf("after the tampered reply: got %x, want %x (the mismatched one must not be delivered)", got, want)
	}
	if ps := waitStats(r.pump, pumpStats{FromDevice: 3, SendErrors: 1, ToDevice: 1}); ps.SendErrors != 1 || ps.FromDevice != 3 || ps.ToDevice != 1 {
		t.Errorf("pump stats %+v: want 1 send error, 3 packets from and 1 to the device", ps)
	}
}

// TestPumpAllocations: once a flow exists, carrying a packet from the device
// to the appliance allocates nothing in the pump or the simulator.
func TestPumpAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count needs a quiet process")
	}
	r := newPumpRig(t)
	r.app.reply.Store(false)
	pkt := udpPacket(netip.AddrPortFrom(testClient, 40002), netip.AddrPortFrom(testDest, 9), make([]byte, 1000))
	sendOne := func() {
		want := r.sim.Stats().Sent + 1
		if _, err := unix.Write(r.peer, pkt); err != nil {
			t.Fatal(err)
		}
		for i := 0; r.sim.Stats().Sent < want; i++ {
			if i > 100000 {
				t.Fatal("the pump did not send the packet within seconds")
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
	sendOne() // creates the flow
	allocs := testing.AllocsPerRun(200, sendOne)
	if allocs > 0.5 {
		t.Errorf("%.1f allocations per packet from the device to the appliance, want 0", allocs)
	}
}

// waitStats returns the pump's counters once they equal want, or after 2 s.
func waitStats(p *pump, want pumpStats) pumpStats {
	deadline := time.Now().Add(2 * time.Second)
	for {
		ps := p.stats()
		if ps == want || time.Now().After(deadline) {
			return ps
		}
		time.Sleep(time.Millisecond)
	}
}

// TestOpenTUN creates a TUN device in a network namespace private to one
// thread, so nothing appears in the host's namespace: the kernel names it
// from the pattern, it is a layer-3 point-to-point device, and it vanishes
// when the simulator closes it.
func TestOpenTUN(t *testing.T) {
	testenv.RequireRoot(t, "the TUN test needs root: it creates a device in a private network namespace")
	inPrivateNetns(t, "opening the TUN device", func() error {
		f, name, err := openTUN("gwlbsim%d", true)
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			f.Close()
			return fmt.Errorf("the device %q is not there: %w", name, err)
		}
		f.Close()
		_, gone := net.InterfaceByName(name)
		switch {
		case name != "gwlbsim0":
			return fmt.Errorf("device named %q, want gwlbsim0 (the first in a fresh namespace)", name)
		case ifi.Flags&net.FlagPointToPoint == 0 || len(ifi.HardwareAddr) != 0:
			return fmt.Errorf("device flags %v, hardware address %q: want a layer-3 point-to-point device", ifi.Flags, ifi.HardwareAddr)
		case gone == nil:
			return fmt.Errorf("device %q still exists after close", name)
		}
		return nil
	})
}

// TestOpenTUNOffloadTakes: a TUN device opened with offload really has it
// (virtio-net header, TSO split, GRO: a batch of more than one packet),
// and one opened without it runs a packet at a time. wireguard's tun turns
// offload on only if the device was created with IFF_VNET_HDR, and
// otherwise silently runs without it, so --offload and the netns tests'
// offload path could be off with nothing failing.
func TestOpenTUNOffloadTakes(t *testing.T) {
	testenv.RequireRoot(t, "the TUN test needs root: it creates a device in a private network namespace")
	inPrivateNetns(t, "opening the TUN devices", func() error {
		batch := func(offload bool) (int, error) {
			dev, _, err := openTUN("gwlbsim%d", offload)
			if err != nil {
				return 0, err
			}
			defer dev.Close()
			return dev.BatchSize(), nil
		}
		on, err := batch(true)
		if err != nil {
			return err
		}
		off, err := batch(false)
		if err != nil {
			return err
		}
		if on <= 1 || off != 1 {
			return fmt.Errorf("batch size %d with offload, %d without: want more than 1, and 1", on, off)
		}
		return nil
	})
}

// inPrivateNetns runs fn in a network namespace private to one thread, so
// nothing it creates appears in the host's, and fails t with its error or
// when it has not finished within 10 s (what names it then).
func inPrivateNetns(t *testing.T, what string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked: when the goroutine ends, the runtime
		// ends the thread and with it the namespace it alone lives in.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		errc <- fn()
	}()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not finish within 10s", what)
	}
}

// TestPumpReplyCapacity: a reply handed to the device starts with the
// headroom for its header, and its capacity never lets the device coalesce
// a packet beyond 65,535 bytes (it bounds coalescing by capacity alone;
// beyond that, the IP length field wraps and the packet is garbage).
func TestPumpReplyCapacity(t *testing.T) {
	p := &pump{}
	buf := make([]byte, 100, 70000)
	for i := range buf {
		buf[i] = byte(i)
	}
	p.reply(buf, 60)
	b := p.out[0]
	if !bytes.Equal(b[gwlbsim.ReplyHeadroom:], buf[60:]) {
		t.Fatalf("the packet at the device's offset is %x, want %x", b[gwlbsim.ReplyHeadroom:], buf[60:])
	}
	if room := cap(b) - 2*gwlbsim.ReplyHeadroom; room > maxCoalesced {
		t.Errorf("room to coalesce up to %d bytes, want at most %d", room, maxCoalesced)
	}
}
