package proxy

import (
	"net"
	"sync"
	"time"
)

// watchServerFirst ends the wait for a silent client as soon as the
// destination speaks first (SSH, SMTP, databases), so their banners do not
// wait out the sniff timeout. The sniffer must set its read deadlines
// through the returned deadliner: the destination may speak before the
// sniffer sets its first deadline, which would otherwise overwrite the
// wake-up. stop ends the watch and returns what the destination sent
// meanwhile, which must reach the client before anything else it sends.
func watchServerFirst(client, up net.Conn) (deadliner *serverFirstWatch, stop func() []byte) {
	w := &serverFirstWatch{client: client, sniffing: true}
	done := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 4096)
		n, _ := up.Read(buf) // an error shows again on the relay's next read
		w.mu.Lock()
		if n > 0 {
			w.spoke = true
			if w.sniffing {
				_ = client.SetReadDeadline(time.Now()) // the client is not first: stop waiting for it
			}
		}
		w.mu.Unlock()
		done <- buf[:n]
	}()
	return w, func() []byte {
		w.mu.Lock()
		w.sniffing = false
		w.mu.Unlock()
		_ = client.SetReadDeadline(time.Time{}) // undo a wake-up that came after the sniff
		_ = up.SetReadDeadline(time.Now())      // end the watcher's read if it still waits
		early := <-done
		_ = up.SetReadDeadline(time.Time{})
		return early
	}
}

// serverFirstWatch is the client's read deadline as the sniffer sets it:
// once the destination has spoken, any deadline, or none, is now.
type serverFirstWatch struct {
	client   net.Conn
	mu       sync.Mutex
	sniffing bool
	spoke    bool
}

// SetReadDeadline implements sniff.ReadDeadliner.
func (w *serverFirstWatch) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.spoke { // even "no deadline": the wait must end now
		t = time.Now()
	}
	return w.client.SetReadDeadline(t)
}

// prefixConn reads prefix before the connection itself.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite passes a half-close on.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
