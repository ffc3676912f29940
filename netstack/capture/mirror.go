package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The mirror's frames: Ethernet with an 802.1Q tag naming the GWLB
// endpoint. The MAC addresses are locally administered and fixed: the
// client's side ends in 01, the destinations' side in 02, so that the
// direction shows (and a filter such as "ether src 02:67:77:6c:62:01"
// selects the clients' packets). No host answers to them: the kernel
// drops the frames it is handed after the packet sockets (tcpdump, an
// IDS) have seen them.
// Synthesized plaintext (plaintext.go) has MAC addresses of its own, ending
// in 11 and 12.
var (
	clientMAC      = [6]byte{0x02, 0x67, 0x77, 0x6c, 0x62, 0x01}
	destMAC        = [6]byte{0x02, 0x67, 0x77, 0x6c, 0x62, 0x02}
	plainClientMAC = [6]byte{0x02, 0x67, 0x77, 0x6c, 0x62, 0x11}
	plainDestMAC   = [6]byte{0x02, 0x67, 0x77, 0x6c, 0x62, 0x12}
)

const (
	frameHeader = 14 + 4 // Ethernet and the 802.1Q tag
	// MaxVLANs is how many GWLB endpoints the mirror tells apart: VLAN IDs
	// 1 to 4094 (with Config.Plaintext, MaxPlaintextVLANs). Once all are
	// taken, a new endpoint gets the ID of one silent for an hour; if there
	// is none, its packets are not mirrored and are counted (NoVLAN).
	MaxVLANs = 4094
	// mirrorMTU is the MTU the mirror device is given: the largest packet
	// the mirror writes (a large slot), plus the 802.1Q tag, since readers
	// such as Suricata size their capture buffers from the MTU and the
	// Ethernet header alone, and would cut longer frames short.
	mirrorMTU = largeSlot + 4
	// vlanReuseIdle is how long an endpoint must have been silent before
	// its VLAN ID goes to a new endpoint, once all are taken: long past
	// the appliance's closing its stack, and past the flow timeouts of
	// Suricata and Zeek, so that the IDS holds no state of the old
	// endpoint's flows that the new one's could be mixed into.
	vlanReuseIdle = time.Hour
)

// mirror writes packets to a TAP device as VLAN-tagged Ethernet frames.
// It runs on one goroutine; stats are read from others.
type mirror struct {
	name     string
	f        *os.File
	frame    []byte
	maxVLANs int // MaxVLANs, or MaxPlaintextVLANs with plaintext

	mu        sync.Mutex
	vlans     map[uint64]vlanEntry // endpoint -> VLAN ID, in order of first packet
	lastError string
	// noReuseBefore: with all VLAN IDs taken, no endpoint can have been
	// silent for vlanReuseIdle before then (unix nanoseconds), so a new
	// endpoint's packets need not look for one until then.
	noReuseBefore int64
	exhausted     bool // the last new endpoint found no VLAN ID

	packets, bytes, errs atomic.Uint64
	noVLAN               atomic.Uint64 // packets dropped: no VLAN ID left
}

// vlanEntry is an endpoint's VLAN ID and when it last had a packet.
type vlanEntry struct {
	id   uint16
	last int64 // unix nanoseconds
}

// dropInHint is what an error opening the mirror tells the operator to do:
// the shipped unit's sandbox keeps the device out until its drop-in is in.
const dropInHint = "under systemd, install the mirror's drop-in: cp /usr/share/gwlbproxy/mirror-tap.conf /etc/systemd/system/gwlbproxy.service.d/ (docs/ids.md)"

// openMirror opens the TAP device name, creating it if it does not exist
// (which needs CAP_NET_ADMIN; a device made beforehand with "ip tuntap add
// NAME mode tap user gwlbproxy" needs none), and brings it up.
//
// Failing here fails the start: the operator asked for the IDS feed, and an
// appliance that ran on without it would leave the IDS blind with nothing
// but a log line to say so. The failure shows at the first start of a new
// configuration, and an instance that never starts never passes its health
// check, so the GWLB sends it nothing.
func openMirror(name string, plaintext bool) (*mirror, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("--mirror-tap: opening /dev/net/tun (%s): %w", dropInHint, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("--mirror-tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("--mirror-tap %q: attaching the TAP device (needs CAP_NET_ADMIN, or a device made for this user beforehand; %s): %w", name, dropInHint, err)
	}
	// The host must not talk on the mirror itself: no IPv6 link-local
	// address, so no router or neighbour solicitations among the packets.
	if err := disableIPv6(name); err != nil {
		slog.Warn("mirror: could not turn IPv6 off on the TAP device; the IDS will see the host's own IPv6 frames (neighbour and multicast listener messages) among the mirrored ones: sysctl -w net.ipv6.conf.NAME.disable_ipv6=1, or "+dropInHint,
			"device", name, "err", err)
	}
	if err := raiseMTU(name, mirrorMTU); err != nil {
		slog.Warn(fmt.Sprintf("mirror: could not raise the TAP device's MTU; an IDS sizing its capture from the MTU (Suricata, Zeek) would cut jumbo frames: ip link set NAME mtu %d", mirrorMTU),
			"device", name, "want_mtu", mirrorMTU, "err", err)
	}
	if err := setUp(name); err != nil {
		slog.Warn("mirror: could not bring the TAP device up; bring it up yourself (ip link set NAME up)", "device", name, "err", err)
	}
	m := &mirror{name: name, f: os.NewFile(uintptr(fd), "/dev/net/tun:"+name), frame: make([]byte, frameHeader+largeSlot), vlans: map[uint64]vlanEntry{}, maxVLANs: MaxVLANs}
	if plaintext {
		m.maxVLANs = MaxPlaintextVLANs
	}
	copy(m.frame[0:], destMAC[:])
	return m, nil
}

// disableIPv6 sets net.ipv6.conf.NAME.disable_ipv6, unless it is set
// already (by whoever made the device) or the kernel has no IPv6.
func disableIPv6(name string) error {
	p := "/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6"
	cur, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat("/proc/sys/net/ipv6"); errors.Is(err, os.ErrNotExist) {
			return nil // no IPv6 at all
		}
	}
	if err == nil && strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}

// raiseMTU sets the device's MTU to mtu unless it is that large already.
func raiseMTU(name string, mtu int) error {
	return ifreq(name, func(s int, ifr *unix.Ifreq) error {
		if err := unix.IoctlIfreq(s, unix.SIOCGIFMTU, ifr); err != nil {
			return fmt.Errorf("reading the MTU: %w", err)
		}
		if int(ifr.Uint32()) >= mtu {
			return nil
		}
		ifr.SetUint32(uint32(mtu))
		if err := unix.IoctlIfreq(s, unix.SIOCSIFMTU, ifr); err != nil {
			return fmt.Errorf("setting the MTU to %d: %w", mtu, err)
		}
		return nil
	})
}

// setUp sets IFF_UP on the device.
func setUp(name string) error {
	return ifreq(name, func(s int, ifr *unix.Ifreq) error {
		if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
			return err
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		return unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr)
	})
}

// ifreq calls fn with a socket to make interface ioctls on and a request
// naming the device.
func ifreq(name string, fn func(s int, ifr *unix.Ifreq) error) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	return fn(s, ifr)
}

func (m *mirror) run(q *queue, done <-chan struct{}) {
	for {
		select {
		case s := <-q.full:
			if !q.take(s, m.write) {
				return
			}
		case <-done:
			for {
				select {
				case s := <-q.full:
					if !q.take(s, m.write) {
						return
					}
				default:
					return
				}
			}
		}
	}
}

// vlan returns the endpoint's VLAN ID, giving it the next one on its first
// packet (now, unix nanoseconds); once all are taken, that of the endpoint
// silent longest if it has been for vlanReuseIdle; else 0.
func (m *mirror) vlan(endpoint uint64, now int64) uint16 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.vlans[endpoint]; ok {
		e.last = now
		m.vlans[endpoint] = e // an existing key: no allocation
		return e.id
	}
	var id uint16
	if len(m.vlans) < m.maxVLANs {
		id = uint16(len(m.vlans) + 1)
	} else if id = m.reuseVLAN(now); id == 0 {
		if !m.exhausted {
			m.exhausted = true
			slog.Warn("mirror: all VLAN IDs are taken by endpoints seen within the last hour; packets of new GWLB endpoints are not mirrored (counted in no_vlan)",
				"device", m.name, "vlans", m.maxVLANs, "endpoint", EndpointName(endpoint))
		}
		return 0
	}
	m.exhausted = false
	m.vlans[endpoint] = vlanEntry{id: id, last: now}
	if m.maxVLANs == MaxPlaintextVLANs {
		slog.Info("mirror: new GWLB endpoint", "device", m.name, "endpoint", EndpointName(endpoint), "vlan", id,
			"plaintext_vlan", id+PlaintextVLANOffset)
	} else {
		slog.Info("mirror: new GWLB endpoint", "device", m.name, "endpoint", EndpointName(endpoint), "vlan", id)
	}
	return id
}

// reuseVLAN takes the VLAN ID of the endpoint silent longest, if it has
// been silent for vlanReuseIdle, and returns it (0: none). It looks through
// every endpoint, so it looks only when one may have become idle enough.
func (m *mirror) reuseVLAN(now int64) uint16 {
	if now < m.noReuseBefore {
		return 0
	}
	var oldest uint64
	var e vlanEntry
	first := true
	for ep, v := range m.vlans {
		if first || v.last < e.last {
			oldest, e, first = ep, v, false
		}
	}
	if first {
		return 0
	}
	if now-e.last < int64(vlanReuseIdle) {
		m.noReuseBefore = e.last + int64(vlanReuseIdle)
		return 0
	}
	delete(m.vlans, oldest)
	slog.Info("mirror: VLAN ID taken from a GWLB endpoint silent for over an hour", "device", m.name,
		"vlan", e.id, "old_endpoint", EndpointName(oldest), "silent_for", time.Duration(now-e.last).Round(time.Second))
	return e.id
}

func (m *mirror) write(s *slot) {
	pkt := s.data()
	if len(pkt) == 0 {
		m.errs.Add(1)
		return
	}
	id := m.vlan(s.endpoint, s.ts)
	if id == 0 {
		m.noVLAN.Add(1)
		return
	}
	f := m.frame
	cmac, dmac := clientMAC, destMAC
	if s.plain {
		id += PlaintextVLANOffset
		cmac, dmac = plainClientMAC, plainDestMAC
	}
	dst, src := dmac, cmac
	if s.out {
		dst, src = cmac, dmac
	}
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:], 0x8100)
	binary.BigEndian.PutUint16(f[14:], id)
	etherType := uint16(0x0800)
	if pkt[0]>>4 == 6 {
		etherType = 0x86dd
	}
	binary.BigEndian.PutUint16(f[16:], etherType)
	n := copy(f[frameHeader:], pkt)
	if _, err := m.f.Write(f[:frameHeader+n]); err != nil {
		m.fail(err)
		return
	}
	m.packets.Add(1)
	m.bytes.Add(uint64(n))
}

func (m *mirror) fail(err error) {
	m.errs.Add(1)
	m.mu.Lock()
	changed := m.lastError != err.Error()
	m.lastError = err.Error()
	m.mu.Unlock()
	if changed {
		slog.Warn("mirror: writing packets failed; they are dropped and counted", "device", m.name, "err", err)
	}
}

func (m *mirror) close() error { return m.f.Close() }

func (m *mirror) stats(q *queue) *MirrorStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &MirrorStats{
		SinkStats: SinkStats{Packets: m.packets.Load(), Bytes: m.bytes.Load(), Dropped: q.dropped.Load(), Errors: m.errs.Load()},
		Device:    m.name, VLANs: make(map[string]uint16, len(m.vlans)), NoVLAN: m.noVLAN.Load(), LastError: m.lastError,
	}
	if m.maxVLANs == MaxPlaintextVLANs {
		s.PlaintextVLANOffset = PlaintextVLANOffset
	}
	for ep, e := range m.vlans {
		s.VLANs[EndpointName(ep)] = e.id
	}
	return s
}
