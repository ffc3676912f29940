package intercept

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"
)

// stale reports whether c, an HTTP/1 connection between exchanges, can no
// longer carry a request: the upstream sent something nobody asked for
// (bytes after a response, a "408 Request Timeout" before closing an idle
// connection) or ended the connection. Whatever came would be taken for
// the next request's response. Nothing is written meanwhile and nothing
// waits: c is read with a deadline already past, which returns what the
// connection's own buffers hold (a TLS connection may hold decrypted
// bytes, or whole records, that its socket no longer does) and never
// reads the socket; then the socket itself is looked at without waiting
// (peerSpoke). What was read is lost: a stale connection is only closed.
func stale(c net.Conn) bool {
	if c.SetReadDeadline(time.Unix(1, 0)) != nil {
		return true
	}
	var b [1]byte
	n, err := c.Read(b[:])
	if c.SetReadDeadline(time.Time{}) != nil {
		return true
	}
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	return peerSpoke(c)
}

// rawConn returns the socket under c, through the wrappers this package
// knows (TLS, connSet's, countedConn), or nil when there is none to reach.
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := unwrapConn(c, isSyscallConn).(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

func isSyscallConn(c net.Conn) bool { _, ok := c.(syscall.Conn); return ok }

// unwrapConn walks down c's wrappers this package knows (connSet's
// setConn, countedConn, TLS) to the first connection match accepts, c
// itself included; nil when there is none.
func unwrapConn(c net.Conn, match func(net.Conn) bool) net.Conn {
	for range 8 {
		if match(c) {
			return c
		}
		switch x := c.(type) {
		case *setConn:
			c = x.Conn
		case *countedConn:
			c = x.Conn
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}
