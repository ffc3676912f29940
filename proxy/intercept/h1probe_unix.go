//go:build unix

package intercept

import (
	"net"
	"syscall"
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
			// The socket is non-blocking (the runtime's poller owns it).
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
			if err == syscall.EINTR {
				continue
			}
			// No error: a byte, or (none) the end. EAGAIN: nothing yet.
			spoke = err == nil || (err != syscall.EAGAIN && err != syscall.EWOULDBLOCK)
			return true // never wait for readability
		}
	})
	return spoke || err != nil
}
