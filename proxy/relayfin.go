package proxy

import (
	"net"
	"syscall"

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
func closeDelivering(c net.Conn) {
	discardUnread(c)
	_ = c.Close()
}

// discardUnread reads what c (a socket, under the proxy's wrappers) has
// received, without waiting, and drops it. It reads through Control, not
// Read: the relay's other direction may be waiting in a Read of c, which
// holds c's read lock.
func discardUnread(c net.Conn) {
	sc, ok := unwrapped(c).(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	bufp := relayBufPool.Get().(*[]byte)
	defer relayBufPool.Put(bufp)
	_ = rc.Control(func(fd uintptr) {
		for range maxDiscardReads {
			if n, e := hostconn.ReadFD(fd, *bufp); e != 0 || n == 0 {
				return
			}
		}
	})
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
