package netstack

import (
	"net"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxBatch is how many datagrams one system call reads or writes: a
// reader's recvmmsg, a reply batch's sendmmsg. 64 is also the most
// segments UDP GSO takes in one send (the kernel's UDP_MAX_SEGMENTS).
const maxBatch = 64

// readSlot is the room for one received GENEVE datagram. The GWLB sends at
// most maxDatagram bytes; a bigger datagram comes from something else, and
// is truncated by the kernel, seen as such, and dropped.
const readSlot = 16 << 10

// batchReader reads GENEVE datagrams from one socket, up to maxBatch per
// recvmmsg, into buffers of its own. It is used by one goroutine.
type batchReader struct {
	rc    syscall.RawConn
	bufs  [maxBatch][]byte
	hdrs  [maxBatch]unix.Mmsghdr
	iovs  [maxBatch]unix.Iovec
	names [maxBatch]unix.RawSockaddrInet4

	// The outcome of the last recvmmsg, set by readFn.
	n     int
	errno syscall.Errno
	// readFn is doRead bound once, so that no read allocates a closure.
	readFn func(fd uintptr) bool
}

func newBatchReader(c *net.UDPConn) (*batchReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &batchReader{rc: rc}
	mem := make([]byte, maxBatch*readSlot)
	for i := range r.bufs {
		r.bufs[i] = mem[i*readSlot : (i+1)*readSlot : (i+1)*readSlot]
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(readSlot)
		h := &r.hdrs[i].Hdr
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
	}
	r.readFn = r.doRead
	return r, nil
}

// read waits for datagrams and returns how many it read; datagram i is then
// r.datagram(i), valid until the next read.
func (r *batchReader) read() (int, error) {
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		r.hdrs[i].Hdr.Flags = 0
		r.hdrs[i].Len = 0
	}
	if err := r.rc.Read(r.readFn); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	return r.n, nil
}

func (r *batchReader) doRead(fd uintptr) bool {
	for {
		// A raw system call: it cannot block (MSG_DONTWAIT), so the
		// runtime's bookkeeping for one that might (handing the processor
		// over, waking its monitor thread) is pure cost, paid per packet.
		// gVisor's own link endpoints (pkg/rawfile) do the same.
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), maxBatch, unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // the poller waits, then calls again
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// datagram returns the i-th datagram of the last read, its sender, and
// whether the kernel truncated it.
func (r *batchReader) datagram(i int) (b []byte, from netip.AddrPort, truncated bool) {
	h := &r.hdrs[i]
	sa := &r.names[i]
	p := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order
	port := uint16(p[0])<<8 | uint16(p[1])
	return r.bufs[i][:h.Len], netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), h.Hdr.Flags&unix.MSG_TRUNC != 0
}

// replyBatch gathers the GENEVE datagrams of one write from the stack (a
// packet, or a GSO segment cut at the MSS) so that they leave in one
// sendmmsg (or one UDP GSO send) instead of one system call each. Batches
// are pooled; their buffers are made on first use.
type replyBatch struct {
	n int
	// failedBytes is what the return path could not send of the batch.
	failedBytes int
	bufs        [maxBatch][]byte         // scratch of maxDatagram bytes each
	pkts        [maxBatch][]byte         // the datagrams, outer headroom first (returnPath.send's pkt)
	dsts        [maxBatch]netip.AddrPort // each datagram's GWLB address and source port

	// System call scratch.
	hdrs  [maxBatch]unix.Mmsghdr
	iovs  [maxBatch]unix.Iovec
	names [maxBatch]unix.RawSockaddrInet4
	cmsg  [24]byte // one UDP_SEGMENT control message (unix.CmsgSpace(2))

	// The arguments and outcome of a send through a socket's RawConn,
	// which calls writeFn (doWrite bound once, so no send allocates).
	writeFn            func(fd uintptr) bool
	from, to           int  // the datagrams to send
	gso                bool // one sendmsg with UDP_SEGMENT instead of sendmmsg
	sent               int
	errno              syscall.Errno
	sockaddrForReplies unix.RawSockaddrInet4
}

var replyBatchPool = sync.Pool{New: func() any {
	b := &replyBatch{}
	b.writeFn = b.doWrite
	return b
}}

func getReplyBatch() *replyBatch { return replyBatchPool.Get().(*replyBatch) }

func (b *replyBatch) release() {
	b.n, b.failedBytes = 0, 0
	replyBatchPool.Put(b)
}

// buf returns the scratch buffer of the next datagram.
func (b *replyBatch) buf() []byte {
	if b.bufs[b.n] == nil {
		b.bufs[b.n] = make([]byte, maxDatagram)
	}
	return b.bufs[b.n]
}

// add takes the next datagram, built in b.buf().
func (b *replyBatch) add(pkt []byte, gwlb netip.AddrPort) {
	b.pkts[b.n] = pkt
	b.dsts[b.n] = gwlb
	b.n++
}

func (b *replyBatch) full() bool { return b.n == maxBatch }

// fail counts datagrams [from, to) as not sent and returns how many.
func (b *replyBatch) fail(from, to int) int {
	for i := from; i < to; i++ {
		b.failedBytes += len(b.pkts[i]) - outerHeadroom
	}
	return to - from
}

// sockaddr fills sa with addr and port, the port in network byte order.
func sockaddr(sa *unix.RawSockaddrInet4, addr [4]byte, port uint16) {
	sa.Family = unix.AF_INET
	sa.Addr = addr
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)
}

// prepareMmsg points message i at datagram i, from byte skip on (the outer
// headroom the bound path does not send), addressed to name.
func (b *replyBatch) prepareMmsg(i, skip int, name *unix.RawSockaddrInet4) {
	p := b.pkts[i][skip:]
	b.iovs[i].Base = &p[0]
	b.iovs[i].SetLen(len(p))
	h := &b.hdrs[i]
	h.Len = 0
	h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(name)), Namelen: unix.SizeofSockaddrInet4, Iov: &b.iovs[i]}
	h.Hdr.SetIovlen(1)
}

// sendmmsg sends datagrams [from, to) as prepared by prepareMmsg through
// fd with flags, retrying after EINTR and partial sends; it returns how
// many were sent before an error. With MSG_DONTWAIT the call cannot block
// and is made raw (see batchReader.doRead); without it (the raw return
// path's blocking socket) the runtime must know it may block.
func (b *replyBatch) sendmmsg(fd uintptr, from, to, flags int) (int, syscall.Errno) {
	call := unix.Syscall6
	if flags&unix.MSG_DONTWAIT != 0 {
		call = unix.RawSyscall6
	}
	i := from
	for i < to {
		n, _, e := call(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[i])), uintptr(to-i), uintptr(flags), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return i - from, e
		}
		i += int(n)
	}
	return i - from, 0
}

// sendmmsgOrWait sends datagrams [from, to) through the blocking socket fd
// (the raw return path's) and returns how many were sent before an error.
// With MSG_DONTWAIT a send does not wait for room in the socket's buffer,
// so it is tried first as a raw call: an ordinary call after an idle spell
// wakes the runtime's monitor thread, which hands this processor to another
// thread if the call lasts, and on a veth or loopback route the call lasts
// through the receiver's input path. Only what a full socket refused is
// sent again with an ordinary call, which waits. Like every raw call, it
// keeps its processor for as long as the kernel takes (design.md, Raw
// system calls), which includes allocating the datagrams' buffers.
func (b *replyBatch) sendmmsgOrWait(fd uintptr, from, to int) (int, syscall.Errno) {
	n, e := b.sendmmsg(fd, from, to, unix.MSG_DONTWAIT)
	if e != unix.EAGAIN {
		return n, e
	}
	m, e := b.sendmmsg(fd, from+n, to, 0)
	return n + m, e
}

// doWrite sends datagrams [b.from, b.to) to b.sockaddrForReplies through
// the non-blocking socket fd: one sendmsg with UDP_SEGMENT (b.gso) or a
// sendmmsg. It returns false to wait for the socket to be writable.
func (b *replyBatch) doWrite(fd uintptr) bool {
	if b.gso {
		n, e := b.sendGSO(fd)
		if e == unix.EAGAIN {
			return false
		}
		b.sent, b.errno = n, e
		return true
	}
	n, e := b.sendmmsg(fd, b.from+b.sent, b.to, unix.MSG_DONTWAIT)
	b.sent += n
	if e == unix.EAGAIN {
		return false
	}
	b.errno = e
	return true
}

// sendGSO sends datagrams [b.from, b.to), all of one size but the last,
// which may be shorter, as one UDP GSO send: the kernel cuts the payload
// into datagrams of the first one's size.
func (b *replyBatch) sendGSO(fd uintptr) (int, syscall.Errno) {
	seg := len(b.pkts[b.from]) - outerHeadroom
	for i := b.from; i < b.to; i++ {
		p := b.pkts[i][outerHeadroom:]
		b.iovs[i].Base = &p[0]
		b.iovs[i].SetLen(len(p))
	}
	cm := (*unix.Cmsghdr)(unsafe.Pointer(&b.cmsg[0]))
	cm.Level, cm.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	cm.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b.cmsg[unix.CmsgLen(0)])) = uint16(seg)
	msg := unix.Msghdr{
		Name: (*byte)(unsafe.Pointer(&b.sockaddrForReplies)), Namelen: unix.SizeofSockaddrInet4,
		Iov: &b.iovs[b.from], Control: &b.cmsg[0],
	}
	msg.SetIovlen(b.to - b.from)
	msg.SetControllen(unix.CmsgSpace(2))
	for {
		_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT) // cannot block: raw
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return b.to - b.from, 0
	}
}
