package proxy

import (
	"net"
	"sync"
	"time"
)

// watchServerFirst ends the wait for a silent client as soon as the
// destination speaks first (SSH, SMTP, databases), so their banners do not
// wait out the sniff timeout. stop ends the watch and returns what the
// destination sent meanwhile, which must reach the client before anything
// else the destination sends.
func watchServerFirst(client, up net.Conn) (stop func() []byte) {
	var mu sync.Mutex
	sniffing := true
	done := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 4096)
		n, _ := up.Read(buf) // an error shows again on the relay's next read
		mu.Lock()
		if sniffing && n > 0 {
			_ = client.SetReadDeadline(time.Now()) // the client is not first: stop waiting for it
		}
		mu.Unlock()
		done <- buf[:n]
	}()
	return func() []byte {
		mu.Lock()
		sniffing = false
		mu.Unlock()
		_ = client.SetReadDeadline(time.Time{}) // undo a wake-up that came after the sniff
		_ = up.SetReadDeadline(time.Now())      // end the watcher's read if it still waits
		early := <-done
		_ = up.SetReadDeadline(time.Time{})
		return early
	}
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
