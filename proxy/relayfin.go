package proxy

import (
	"math"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
)

// A client's FIN ends its upload whole: the stack has acknowledged every
// byte and the FIN to it, and its TCP takes them as delivered. A break of
// the client after that (a reset, as a client that closes with an answer
// unread sends, or its vanishing) cuts nothing of the upload, and so must
// not cut what the appliance still holds of it: its tail in the stack,
// unread (netstack.Conn's reads say the end of the stream once the FIN is
// in, whatever came after), or in the host socket's send buffer to a
// destination slower than the client. An Abort (a zero linger) throws the
// send buffer away and resets the destination; the relay closes it
// instead (closeDelivering). A break before the FIN still resets the
// destination: that upload was cut short.

// maxDiscardReads bounds discardUnread's reads of a destination that
// keeps sending: each takes a relay buffer's worth (256 KiB), more than a
// socket's receive buffer holds by default.
const maxDiscardReads = 16

// closeDelivering closes c, a destination that has been sent a client's
// whole upload and its FIN, once the client has broken: the kernel goes on
// sending what c's send buffer holds, and the FIN, and answers anything
// more from the destination with a RST, so nothing waits on a destination
// that stays silent. What the destination sent that nobody will read is
// discarded first: a close with bytes unread resets the connection at once
// (RFC 2525), throwing the upload's tail away as an Abort does. Bytes the
// destination sends after that draw the RST, as they would from the gone
// client.
//
// Closed, the socket is no longer the appliance's to watch (no fd, no
// record pending, nothing the reclaim or the stall watch sees), and a
// destination that accepts nothing but answers the kernel's zero-window
// probes would keep it, and its tail, for minutes. Its user timeout is set
// to stall first (the write-stall timeout in force), the bound a write to
// such a destination has while the flow lives: the kernel resets it once
// nothing it sent has been acknowledged for that long.
func closeDelivering(c net.Conn, stall time.Duration) {
	if rc := rawConnOf(c); rc != nil {
		bufp := relayBufPool.Get().(*[]byte)
		_ = rc.Control(func(fd uintptr) {
			discardUnread(fd, *bufp)
			if ms := stall.Milliseconds(); ms > 0 && ms <= math.MaxInt32 {
				_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(ms))
			}
		})
		relayBufPool.Put(bufp)
	}
	_ = c.Close()
}

// rawConnOf returns the socket under c's proxy wrappers, or nil when
// there is none. Its Control, not Read: the relay's other direction may
// be waiting in a Read of c, which holds c's read lock.
func rawConnOf(c net.Conn) syscall.RawConn {
	sc, ok := unwrapped(c).(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// discardUnread reads what the socket fd has received, without waiting,
// and drops it.
func discardUnread(fd uintptr, buf []byte) {
	for range maxDiscardReads {
		if n, e := hostconn.ReadFD(fd, buf); e != 0 || n == 0 {
			return
		}
	}
}

// clientBrokenOf returns what says whether client, under the proxy's
// wrappers, broke its connection (netstack.Conn's Broken), or nil when it
// cannot say.
func clientBrokenOf(client net.Conn) func() bool {
	if b, ok := unwrapped(client).(brokenReader); ok {
		return b.Broken
	}
	return nil
}

// unwrapped is c under the proxy's wrappers (wrappedConn).
func unwrapped(c net.Conn) net.Conn {
	for {
		w, ok := c.(wrappedConn)
		if !ok {
			return c
		}
		c = w.unwrap()
	}
}
