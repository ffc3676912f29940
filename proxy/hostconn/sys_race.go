//go:build race

package hostconn

import "syscall"

// Under the race detector reads and writes are the syscall package's,
// which tell it that what is written to a socket happens before what is
// read from it; raw calls would hide that, and it would report races that
// are not there. (SIGPIPE is ignored by the runtime for these sockets.)

// ReadFD reads into b from the non-blocking socket fd, again after EINTR.
func ReadFD(fd uintptr, b []byte) (int, syscall.Errno) {
	for {
		n, err := syscall.Read(int(fd), b)
		if err != syscall.EINTR {
			return max(n, 0), errno(err)
		}
	}
}

func writeFD(fd uintptr, b []byte) (int, syscall.Errno) {
	for {
		n, err := syscall.Write(int(fd), b)
		if err != syscall.EINTR {
			return max(n, 0), errno(err)
		}
	}
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return err.(syscall.Errno)
}
