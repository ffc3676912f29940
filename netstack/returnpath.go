package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// outerHeadroom is the room kept in front of every reply for an outer IPv4
// and UDP header (the raw return path writes them there).
const outerHeadroom = 20 + 8

// returnPath sends GENEVE datagrams back to the GWLB the way the GWLB expects
// them: from the appliance's address and the flow's GWLB source port, to the
// GWLB's address, port 6081.
type returnPath interface {
	// send transmits pkt[outerHeadroom:], a whole GENEVE datagram. The bytes
	// before it are scratch space for an outer header.
	send(pkt []byte, gwlb netip.AddrPort) error
	close() error
	name() string
}

// Return path modes for Config.ReturnPath.
const (
	ReturnPathAuto  = "auto"
	ReturnPathRaw   = "raw"
	ReturnPathBound = "bound"
)

func newReturnPath(mode string, local netip.Addr, listener *net.UDPConn, replyPort uint16, fallbacks *atomic.Uint64) (returnPath, error) {
	switch mode {
	case ReturnPathRaw, ReturnPathAuto, "":
		r, err := newRawReturn(local, replyPort)
		if err == nil || mode == ReturnPathRaw {
			return r, err
		}
		return newBoundReturn(local, listener, replyPort, fallbacks), nil
	case ReturnPathBound:
		return newBoundReturn(local, listener, replyPort, fallbacks), nil
	}
	return nil, fmt.Errorf("unknown return path %q (want auto, raw or bound)", mode)
}

// rawReturn writes whole IPv4/UDP datagrams through one IPPROTO_RAW socket:
// any source port, no port collisions with the host's own sockets, one file
// descriptor. It needs CAP_NET_RAW.
type rawReturn struct {
	fd        int
	local     netip.Addr // the listener's address; unspecified: chosen by route
	replyPort uint16
	srcByDst  sync.Map // netip.Addr (GWLB) -> [4]byte source address
}

func newRawReturn(local netip.Addr, replyPort uint16) (*rawReturn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("opening raw socket for the return path (needs CAP_NET_RAW): %w", err)
	}
	return &rawReturn{fd: fd, local: local, replyPort: replyPort}, nil
}

func (r *rawReturn) name() string { return ReturnPathRaw }

func (r *rawReturn) close() error { return unix.Close(r.fd) }

// source returns the address replies to gwlb leave from: the listener's own
// address, or the one the routing table picks for the GWLB, which is the
// address the GWLB sent to on a single-homed instance.
func (r *rawReturn) source(gwlb netip.Addr) ([4]byte, error) {
	if r.local.Is4() && !r.local.IsUnspecified() {
		return r.local.As4(), nil
	}
	if s, ok := r.srcByDst.Load(gwlb); ok {
		return s.([4]byte), nil
	}
	// Connecting a UDP socket sends nothing; it only asks the route.
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(gwlb, r.replyPort)))
	if err != nil {
		return [4]byte{}, fmt.Errorf("finding the source address towards %s: %w", gwlb, err)
	}
	defer c.Close()
	src := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap().As4()
	r.srcByDst.Store(gwlb, src)
	return src, nil
}

func (r *rawReturn) send(pkt []byte, gwlb netip.AddrPort) error {
	if !gwlb.Addr().Is4() {
		return errors.New("raw return path: GWLB address is not IPv4")
	}
	src, err := r.source(gwlb.Addr())
	if err != nil {
		return err
	}
	dst := gwlb.Addr().As4()
	ip, udp := pkt[:20], pkt[20:outerHeadroom]
	udpLen := len(pkt) - 20
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)))
	binary.BigEndian.PutUint32(ip[4:], 0x4000) // ID filled in by the kernel, DF
	ip[8], ip[9] = 64, protoUDP
	ip[10], ip[11] = 0, 0 // checksum filled in by the kernel
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(udp[0:], gwlb.Port())
	binary.BigEndian.PutUint16(udp[2:], r.replyPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	udp[6], udp[7] = 0, 0
	sum := checksum.Combine(pseudoSum(src, dst, udpLen), checksum.Checksum(pkt[20:], 0))
	if sum = ^sum; sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], sum)

	// unix.Sendto would box a Sockaddr per packet; the raw call does not.
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst}
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(r.fd), uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)),
		0, uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
	if e != 0 {
		return fmt.Errorf("raw return path sendto %s: %w", gwlb.Addr(), syscall.Errno(e))
	}
	return nil
}

func pseudoSum(src, dst [4]byte, udpLen int) uint16 {
	s := checksum.Checksum(src[:], 0)
	s = checksum.Checksum(dst[:], s)
	var tail [4]byte
	tail[1] = protoUDP
	binary.BigEndian.PutUint16(tail[2:], uint16(udpLen))
	return checksum.Checksum(tail[:], s)
}

// boundReturn sends from one UDP socket per GWLB source port, bound on
// first use. It needs no privilege; its cost is a file descriptor per port
// and the chance that a port is taken by another socket on the host, in
// which case the reply leaves from the listener's port and the fallback is
// counted. A port that could not be bound is tried again after
// bindRetryAfter: whatever held it (a short-lived client socket of the
// host, most likely) may have let it go.
type boundReturn struct {
	local     netip.Addr
	listener  *net.UDPConn
	replyPort uint16
	fallbacks *atomic.Uint64

	mu        sync.RWMutex
	socks     map[uint16]*net.UDPConn
	failed    map[uint16]time.Time // ports whose bind failed: when to try again
	retryWait time.Duration
}

// bindRetryAfter is how long a port whose bind failed is left on the
// listener's socket before binding it is tried again.
const bindRetryAfter = 10 * time.Second

func newBoundReturn(local netip.Addr, listener *net.UDPConn, replyPort uint16, fallbacks *atomic.Uint64) *boundReturn {
	listenPort := listener.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	return &boundReturn{
		local: local, listener: listener, replyPort: replyPort, fallbacks: fallbacks,
		socks:  map[uint16]*net.UDPConn{listenPort: listener},
		failed: map[uint16]time.Time{}, retryWait: bindRetryAfter,
	}
}

func (r *boundReturn) name() string { return ReturnPathBound }

func (r *boundReturn) socket(port uint16) *net.UDPConn {
	r.mu.RLock()
	c := r.socks[port]
	retry, failed := r.failed[port]
	r.mu.RUnlock()
	if c != nil {
		return c
	}
	if failed && time.Now().Before(retry) {
		return r.listener
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c = r.socks[port]; c != nil {
		return c
	}
	if retry, failed := r.failed[port]; failed && time.Now().Before(retry) {
		return r.listener // another sender just tried
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// Nobody sends to these sockets; keep what they could queue small.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(r.local, port).String())
	if err != nil {
		r.fallbacks.Add(1)
		r.failed[port] = time.Now().Add(r.retryWait)
		return r.listener
	}
	delete(r.failed, port)
	c = pc.(*net.UDPConn)
	r.socks[port] = c
	return c
}

func (r *boundReturn) send(pkt []byte, gwlb netip.AddrPort) error {
	c := r.socket(gwlb.Port())
	_, err := c.WriteToUDPAddrPort(pkt[outerHeadroom:], netip.AddrPortFrom(gwlb.Addr(), r.replyPort))
	return err
}

func (r *boundReturn) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, c := range r.socks {
		if c != r.listener {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
