//go:build !race

package hostconn

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReadFD reads into b (not empty) from the non-blocking socket fd with a
// raw system call, made again after EINTR. MSG_DONTWAIT keeps it from
// blocking even should the socket be switched to blocking: a raw call that
// blocked would hold its processor, and stop the world's next stop with it.
func ReadFD(fd uintptr, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}

// writeFD writes b (not empty) to the non-blocking socket fd with a raw
// system call, made again after EINTR: send with MSG_NOSIGNAL, so that a
// peer gone gives EPIPE without a SIGPIPE.
func writeFD(fd uintptr, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}
