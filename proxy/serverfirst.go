package proxy

import (
	"github.com/gwlbproxy/gwlbproxy/proxy/intercept"
	"net"
	"sync"
	"time"
)

// watchServerFirst ends the wait for a silent client as soon as the
// destination speaks first (SSH, SMTP, databases), so their banners are not
// held, or closes first (a preconnect the server gave up on), so the client
// learns of it. The sniffer must set its read deadlines through the
// returned deadliner: the destination may speak before the sniffer sets its
// first deadline, which would otherwise overwrite the wake-up. stop ends the
// watch and returns what the destination sent meanwhile, or how it ended;
// either must reach the client before anything else.
func watchServerFirst(client, up net.Conn) (deadliner *serverFirstWatch, stop func() ([]byte, error)) {
	w := &serverFirstWatch{client: client, sniffing: true}
	type result struct {
		early []byte
		err   error
	}
	done := make(chan result, 1)
	go func() {
		buf := make([]byte, 4096)
		n, err := up.Read(buf)
		w.mu.Lock()
		ended := n > 0 || (err != nil && w.sniffing) // else stop's own deadline ended the read
		if ended {
			w.spoke = true
			if w.sniffing {
				_ = client.SetReadDeadline(time.Now()) // the client is not first: stop waiting for it
			}
		}
		w.mu.Unlock()
		if n > 0 || !ended {
			err = nil // a close after bytes shows again on the relay's next read
		}
		done <- result{buf[:n], err}
	}()
	return w, func() ([]byte, error) {
		w.mu.Lock()
		w.sniffing = false
		w.mu.Unlock()
		_ = client.SetReadDeadline(time.Time{}) // undo a wake-up that came after the sniff
		_ = up.SetReadDeadline(time.Now())      // end the watcher's read if it still waits
		r := <-done
		_ = up.SetReadDeadline(time.Time{})
		return r.early, r.err
	}
}

// serverFirstWatch is the client's read deadline as the sniffer sets it:
// once the destination has spoken, or a reload has woken the wait (wake),
// any deadline, or none, is now.
type serverFirstWatch struct {
	client   net.Conn
	mu       sync.Mutex
	sniffing bool
	spoke    bool
	woken    bool // a reload woke the wait, and the sniffer has not looked yet (takeWake)
	// waiter lists the connection among those a reload looks at
	// (tcpwaitreload.go); the watch is allocated anyway, so listing it
	// allocates nothing.
	waiter tcpWaiter
}

// SetReadDeadline implements sniff.ReadDeadliner.
func (w *serverFirstWatch) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.spoke || w.woken { // even "no deadline": the wait must end now
		t = time.Now()
	}
	return w.client.SetReadDeadline(t)
}

// wake ends the sniffer's wait now, for a reload that may deny the
// connection (tcpWaiters.sweep); takeWake tells the sniffer so. Nothing
// is classified on the wake: the sniffer decides the connection on its
// addresses and, if they are still allowed, waits on.
func (w *serverFirstWatch) wake() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.sniffing || w.spoke {
		return // the wait is over anyway
	}
	w.woken = true
	_ = w.client.SetReadDeadline(time.Now())
}

// takeWake reports whether the sniff ended because a reload woke it, not
// because the destination spoke, and clears the wake: a sniff after it
// waits again, and only a later wake ends that one.
func (w *serverFirstWatch) takeWake() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	woke := w.woken && !w.spoke
	w.woken = false
	return woke
}

// prefixConn reads prefix, then err if set (how the connection ended while
// it was watched: a reset is reported once only), then the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
	err    error
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil // not the watcher's 4 KiB buffer for the rest of the flow
		}
		return n, nil
	}
	if err := c.err; err != nil {
		c.err = nil
		return 0, err
	}
	return c.Conn.Read(b)
}

// pending reports whether the watched bytes, or how the watch ended, are
// still to be read.
func (c *prefixConn) pending() bool { return len(c.prefix) > 0 || c.err != nil }

func (c *prefixConn) unwrap() net.Conn { return c.Conn }

// CloseWrite passes a half-close on.
func (c *prefixConn) CloseWrite() error { return closeWrite(c.Conn) }

// Abort resets the destination connection.
func (c *prefixConn) Abort() { intercept.Abort(c.Conn) }
