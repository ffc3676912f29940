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
	// sendBatch transmits every datagram of b, each like send's pkt, in as
	// few system calls as it can. It returns how many could not be sent
	// and the last error.
	sendBatch(b *replyBatch) (failed int, err error)
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
	// mu guards fd against close: senders hold it shared, close
	// exclusively. Replies can still come after Server.Close (the echo
	// relay, the delayed-ACK timer), and the kernel gives a closed fd's
	// number to the next socket the process opens: a bare fd would write
	// GENEVE datagrams into that unrelated socket.
	mu        sync.RWMutex
	closed    bool
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

// close closes the socket once any send in flight is done; later sends
// fail with net.ErrClosed.
func (r *rawReturn) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return unix.Close(r.fd)
}

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
	dst, err := r.fill(pkt, gwlb)
	if err != nil {
		return err
	}
	// unix.Sendto would box a Sockaddr per packet; the raw call does not.
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return fmt.Errorf("raw return path: %w", net.ErrClosed)
	}
	// Raw and non-blocking first, then an ordinary call that may wait, as
	// in replyBatch.sendmmsgOrWait.
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(r.fd), uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
	if e == unix.EAGAIN {
		_, _, e = unix.Syscall6(unix.SYS_SENDTO, uintptr(r.fd), uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)),
			0, uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
	}
	if e != 0 {
		return fmt.Errorf("raw return path sendto %s: %w", gwlb.Addr(), syscall.Errno(e))
	}
	return nil
}

// sendBatch sends the batch's datagrams through the raw socket with
// sendmmsg, each with the outer header fill writes.
func (r *rawReturn) sendBatch(b *replyBatch) (failed int, err error) {
	ready := 0 // datagrams [0, ready) are prepared, packed to the front
	for i := range b.n {
		dst, ferr := r.fill(b.pkts[i], b.dsts[i])
		if ferr != nil {
			failed, err = failed+b.fail(i, i+1), ferr
			continue
		}
		b.pkts[ready], b.dsts[ready] = b.pkts[i], b.dsts[i]
		b.names[ready] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst}
		b.prepareMmsg(ready, 0, &b.names[ready])
		ready++
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return failed + b.fail(0, ready), fmt.Errorf("raw return path: %w", net.ErrClosed)
	}
	for i := 0; i < ready; {
		n, e := b.sendmmsgOrWait(uintptr(r.fd), i, ready)
		i += n
		if e != 0 {
			// The datagram at i failed; the ones after it may not.
			failed, err = failed+b.fail(i, i+1), fmt.Errorf("raw return path sendmmsg %s: %w", b.dsts[i].Addr(), e)
			i++
		}
	}
	return failed, err
}

// fill writes the outer IPv4 and UDP header of the GENEVE datagram
// pkt[outerHeadroom:] to gwlb into pkt[:outerHeadroom] and returns the
// destination address.
func (r *rawReturn) fill(pkt []byte, gwlb netip.AddrPort) ([4]byte, error) {
	if !gwlb.Addr().Is4() {
		return [4]byte{}, errors.New("raw return path: GWLB address is not IPv4")
	}
	src, err := r.source(gwlb.Addr())
	if err != nil {
		return [4]byte{}, err
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
	sum := checksum.Combine(pseudoSum(src, dst, udpLen), datagramSum(pkt[20:]))
	if sum = ^sum; sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], sum)
	return dst, nil
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
	socks     map[uint16]*boundSock
	failed    map[uint16]time.Time // ports whose bind failed: when to try again
	retryWait time.Duration
	fallback  *boundSock // the listener's
	// closed is set by close: no socket is bound after it (a reply sent
	// late, by the echo relay or a delayed ACK, would bind one nothing
	// closes, and leave).
	closed bool
}

// boundSock is one socket of the bound return path.
type boundSock struct {
	conn *net.UDPConn
	raw  syscall.RawConn // for sendmmsg and UDP GSO
	// noGSO is set once a UDP GSO send failed on this socket (a device
	// without it, a route whose MTU the segments exceed): its batches go
	// out with sendmmsg from then on.
	noGSO atomic.Bool
}

func newBoundSock(c *net.UDPConn) *boundSock {
	rc, err := c.SyscallConn()
	if err != nil {
		panic(err) // only for a closed or non-socket conn, never a fresh UDP socket
	}
	return &boundSock{conn: c, raw: rc}
}

// bindRetryAfter is how long a port whose bind failed is left on the
// listener's socket before binding it is tried again.
const bindRetryAfter = 10 * time.Second

func newBoundReturn(local netip.Addr, listener *net.UDPConn, replyPort uint16, fallbacks *atomic.Uint64) *boundReturn {
	listenPort := listener.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	ls := newBoundSock(listener)
	return &boundReturn{
		local: local, listener: listener, replyPort: replyPort, fallbacks: fallbacks,
		socks:  map[uint16]*boundSock{listenPort: ls},
		failed: map[uint16]time.Time{}, retryWait: bindRetryAfter,
		fallback: ls,
	}
}

func (r *boundReturn) name() string { return ReturnPathBound }

// socket returns the socket replies to GWLB source port port leave
// through, binding it on the first; nil once the path is closed and port
// has none.
func (r *boundReturn) socket(port uint16) *boundSock {
	r.mu.RLock()
	c := r.socks[port]
	retry, failed := r.failed[port]
	r.mu.RUnlock()
	if c != nil {
		return c
	}
	if failed && time.Now().Before(retry) {
		return r.fallback
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c = r.socks[port]; c != nil {
		return c
	}
	if r.closed {
		return nil
	}
	if retry, failed := r.failed[port]; failed && time.Now().Before(retry) {
		return r.fallback // another sender just tried
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
		return r.fallback
	}
	delete(r.failed, port)
	c = newBoundSock(pc.(*net.UDPConn))
	r.socks[port] = c
	return c
}

// send sends one datagram as a batch of one: through the socket's RawConn
// with a system call that cannot block (see replyBatch.sendmmsg), not
// through net.UDPConn's, which tells the runtime it might.
func (r *boundReturn) send(pkt []byte, gwlb netip.AddrPort) error {
	b := getReplyBatch()
	b.pkts[0], b.dsts[0], b.n = pkt, gwlb, 1
	_, err := r.sendRun(b, 0, 1)
	b.pkts[0] = nil // the caller's buffer
	b.release()
	return err
}

// maxGSOBytes is the most UDP payload one GSO send carries: what fits in
// one IPv4 UDP datagram's length field.
const maxGSOBytes = 65535 - 20 - 8

// sendBatch sends the batch's datagrams run by run: consecutive datagrams
// to the same GWLB address and source port leave through the same socket
// to the same destination, as one UDP GSO send when their sizes allow it
// (all equal but a shorter last one, as TCP segments of one write are),
// else as one sendmmsg.
func (r *boundReturn) sendBatch(b *replyBatch) (failed int, err error) {
	for i := 0; i < b.n; {
		j := i + 1
		for j < b.n && b.dsts[j] == b.dsts[i] {
			j++
		}
		if f, e := r.sendRun(b, i, j); e != nil {
			failed, err = failed+f, e
		}
		i = j
	}
	return failed, err
}

// sendRun sends datagrams [from, to), which share their destination: the
// runs gsoRun finds as UDP GSO sends, the datagrams between them in a
// sendmmsg.
func (r *boundReturn) sendRun(b *replyBatch, from, to int) (failed int, err error) {
	sock := r.socket(b.dsts[from].Port())
	if sock == nil { // closed: nothing is bound after close
		return to - from, net.ErrClosed
	}
	sockaddr(&b.sockaddrForReplies, b.dsts[from].Addr().As4(), r.replyPort)
	for from < to {
		end, gso := from, false
		for end < to && !gso {
			next, ok := end+1, false
			if !sock.noGSO.Load() {
				next, ok = gsoRun(b, end, to)
			}
			if ok && end == from {
				end, gso = next, true // a GSO send first
			} else if ok {
				break // the sendmmsg up to here first
			} else {
				end = next
			}
		}
		if gso {
			b.from, b.to, b.gso, b.sent, b.errno = from, end, true, 0, 0
			werr := sock.raw.Write(b.writeFn)
			if werr == nil && b.errno == 0 {
				from = end
				continue
			}
			// The datagrams go out below, the old way; where the
			// kernel or the route cannot segment, this socket stops
			// trying.
			if werr == nil && gsoUnsupported(b.errno) {
				sock.noGSO.Store(true)
			}
		}
		for i := from; i < end; i++ {
			b.prepareMmsg(i, outerHeadroom, &b.sockaddrForReplies)
		}
		b.from, b.to, b.gso, b.sent, b.errno = from, end, false, 0, 0
		if werr := sock.raw.Write(b.writeFn); werr != nil {
			failed, err = failed+b.fail(from+b.sent, end), fmt.Errorf("bound return path: %w", werr)
			from = end
			continue
		}
		from += b.sent
		if b.errno != 0 {
			// The datagram at from failed; the ones after it may not.
			failed, err = failed+b.fail(from, from+1), fmt.Errorf("bound return path sendmmsg %s: %w", b.dsts[from].Addr(), b.errno)
			from++
		}
	}
	return failed, err
}

// gsoUnsupported reports whether a UDP GSO send failed for good: a kernel
// without it, a device that cannot checksum it, segments bigger than the
// route's MTU.
func gsoUnsupported(e syscall.Errno) bool {
	switch e {
	case unix.EIO, unix.EINVAL, unix.EOPNOTSUPP, unix.ENOPROTOOPT, unix.EMSGSIZE:
		return true
	}
	return false
}

// gsoRun returns the end of the longest run of datagrams from from on (and
// before to) that one UDP GSO send can carry, and whether it is worth one:
// at least two datagrams, all of the first one's size but the last, at
// most maxBatch of them and maxGSOBytes together.
func gsoRun(b *replyBatch, from, to int) (int, bool) {
	seg := len(b.pkts[from])
	total := seg - outerHeadroom
	end := from + 1
	for end < to && end-from < maxBatch {
		n := len(b.pkts[end])
		if n > seg || total+n-outerHeadroom > maxGSOBytes {
			break
		}
		total += n - outerHeadroom
		end++
		if n < seg {
			break // a shorter datagram ends a GSO send
		}
	}
	return end, end-from > 1
}

func (r *boundReturn) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	var errs []error
	for _, c := range r.socks {
		if c.conn != r.listener {
			errs = append(errs, c.conn.Close())
		}
	}
	return errors.Join(errs...)
}
