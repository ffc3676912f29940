//go:build unix

package intercept

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerSpoke reports whether c's socket has bytes to read, or its end, or
// an error: without waiting, and without taking anything from it. A
// connection whose socket cannot be reached is taken to have none.
func peerSpoke(c net.Conn) bool {
	rc := rawConn(c)
	if rc == nil {
		return false
	}
	spoke := false
	err := rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			// A raw call that cannot block (MSG_DONTWAIT): it runs just
			// before a request is written after an idle spell, when an
			// ordinary one would wake the runtime's monitor thread (see
			// package hostconn).
			_, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
			if e == unix.EINTR {
				continue
			}
			// No error: a byte, or (none) the end. EAGAIN: nothing yet.
			spoke = e != unix.EAGAIN
			return true // never wait for readability
		}
	})
	return spoke || err != nil
}
