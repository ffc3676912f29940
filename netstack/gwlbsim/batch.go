package gwlbsim

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sendBatchSize is how many datagrams one sendmmsg carries at most; a TUN
// device with offloads hands over up to 128 segments at once.
const sendBatchSize = 128

// SendBatch sends each of pkts as Send does, with one sendmmsg system call
// for each run of packets that leave from the same source port: a TUN
// device with offloads hands over one TCP send's segments at once, all of
// one flow. The GENEVE header and the packet go as two pieces of one
// datagram, so nothing is copied. It returns how many packets could not be
// sent (unparsable, or refused by the socket) and the first error among
// them. The caller may reuse pkts once it returns.
func (e *Endpoint) SendBatch(pkts [][]byte) (failed int, err error) {
	s := e.sim
	var b *sendBatch
	select {
	case b = <-s.sendBatches:
	default:
		b = newSendBatch()
	}
	var from *net.UDPConn
	for _, inner := range pkts {
		f, r, t, rerr := e.route(inner)
		if rerr != nil {
			failed++
			err = cmpOr(err, rerr)
			continue
		}
		if t == nil || len(inner) == 0 {
			continue // dropped and counted, as the GWLB drops it
		}
		if b.n > 0 && (f.sender != from || b.n == sendBatchSize) {
			s.sendRun(b, from)
		}
		from = f.sender
		b.add(r.header, inner, t)
	}
	if b.n > 0 {
		s.sendRun(b, from)
	}
	failed += b.failed
	err = cmpOr(err, b.err)
	b.failed, b.err = 0, nil
	select {
	case s.sendBatches <- b:
	default:
	}
	return failed, err
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// sendRun sends the batch's datagrams from one socket, counts what was
// sent and failed, and empties the batch.
func (s *Sim) sendRun(b *sendBatch, c *net.UDPConn) {
	b.next = 0
	if err := s.raw[c].Write(b.writeFn); err != nil {
		// The socket is closed: nothing more goes out.
		for i := b.next; i < b.n; i++ {
			b.fail(i, err)
		}
	}
	s.sent.Add(uint64(b.sent))
	b.n, b.sent = 0, 0
}

// sendBatch is the sendmmsg state for up to sendBatchSize datagrams: two
// pieces each (the flow's header, the packet), and the target's address.
type sendBatch struct {
	hdrs    []unix.Mmsghdr
	iovs    []unix.Iovec
	addrs   []unix.RawSockaddrInet4
	targets []*target
	n, next int // datagrams in the batch; the first not yet sent
	sent    int // of this run
	failed  int
	err     error
	writeFn func(fd uintptr) bool // b.write, bound once
}

// newSendBatch makes a batch. Batches are kept for reuse in
// Sim.sendBatches (not a sync.Pool, which the race detector empties at
// random, and each batch is several allocations).
func newSendBatch() *sendBatch {
	b := &sendBatch{
		hdrs: make([]unix.Mmsghdr, sendBatchSize), iovs: make([]unix.Iovec, 2*sendBatchSize),
		addrs: make([]unix.RawSockaddrInet4, sendBatchSize), targets: make([]*target, sendBatchSize),
	}
	b.writeFn = b.write
	return b
}

func (b *sendBatch) add(header, inner []byte, t *target) {
	i := b.n
	iov := b.iovs[2*i : 2*i+2]
	iov[0].Base, iov[1].Base = &header[0], &inner[0]
	iov[0].SetLen(len(header))
	iov[1].SetLen(len(inner))
	sa := &b.addrs[i]
	sa.Family = unix.AF_INET
	sa.Addr = t.addr.Addr().As4()
	port := t.addr.Port()
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	h := &b.hdrs[i].Hdr
	h.Name = (*byte)(unsafe.Pointer(sa))
	h.Namelen = unix.SizeofSockaddrInet4
	h.Iov = &iov[0]
	h.SetIovlen(2)
	b.targets[i] = t
	b.n++
}

// write sends the batch from b.next on; false asks the runtime to wait
// until the socket is writable and call again.
func (b *sendBatch) write(fd uintptr) bool {
	for b.next < b.n {
		// Raw: with MSG_DONTWAIT it cannot block, and the runtime's
		// bookkeeping for a call that might is per-batch cost.
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[b.next])), uintptr(b.n-b.next), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EAGAIN:
			return false
		case errno == unix.EINTR:
			continue
		case errno != 0:
			// Only the first datagram failed (sendmmsg reports an error
			// only when nothing was sent); the rest are tried again.
			b.fail(b.next, errno)
			b.next++
			continue
		}
		for i := b.next; i < b.next+int(n); i++ {
			b.targets[i].packets.Add(1)
		}
		b.sent += int(n)
		b.next += int(n)
	}
	return true
}

func (b *sendBatch) fail(i int, err error) {
	b.failed++
	if b.err == nil {
		b.err = fmt.Errorf("gwlbsim: sending to %s: %w", b.targets[i].addr, err)
	}
}

// recvBatch is the recvmmsg state for up to n datagrams, each read into
// its own buffer after headroom bytes.
type recvBatch struct {
	hdrs     []unix.Mmsghdr
	iovs     []unix.Iovec
	addrs    []unix.RawSockaddrInet4
	bufs     [][]byte // full buffers, capacity limited to their own
	headroom int
	n        int
	err      error
	readFn   func(fd uintptr) bool // b.read, bound once
}

func newRecvBatch(n, size, headroom int) *recvBatch {
	b := &recvBatch{
		hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n), addrs: make([]unix.RawSockaddrInet4, n),
		bufs: make([][]byte, n), headroom: headroom,
	}
	mem := make([]byte, n*size)
	for i := range n {
		b.bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
		b.iovs[i].Base = &b.bufs[i][headroom]
		b.iovs[i].SetLen(size - headroom)
		h := &b.hdrs[i].Hdr
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
	}
	b.readFn = b.read
	return b
}

// recv reads at least one datagram, waiting for it, and returns how many.
func (b *recvBatch) recv(raw syscall.RawConn) (int, error) {
	if err := raw.Read(b.readFn); err != nil {
		return 0, err
	}
	if b.err != nil {
		err := b.err
		b.err = nil
		return 0, fmt.Errorf("recvmmsg: %w", err)
	}
	return b.n, nil
}

func (b *recvBatch) read(fd uintptr) bool {
	for i := range b.hdrs {
		b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		b.hdrs[i].Hdr.Flags = 0
		b.hdrs[i].Len = 0
	}
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0) // cannot block: raw
		switch errno {
		case 0:
			b.n = int(n)
			return true
		case unix.EAGAIN:
			return false
		case unix.EINTR:
			continue
		default:
			b.n, b.err = 0, errno
			return true
		}
	}
}

// message returns the i-th datagram read and its sender's address and
// port; false when it was truncated or its sender is not IPv4.
func (b *recvBatch) message(i int) (dgram []byte, from netip.AddrPort, ok bool) {
	h := &b.hdrs[i]
	if h.Hdr.Flags&unix.MSG_TRUNC != 0 || b.addrs[i].Family != unix.AF_INET {
		return nil, netip.AddrPort{}, false
	}
	return b.bufs[i][b.headroom : b.headroom+int(h.Len)], fromSockaddr(&b.addrs[i]), true
}
