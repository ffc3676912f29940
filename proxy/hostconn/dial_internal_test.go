package hostconn

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestCloseSendsFINBeforeTheBatch: Close ends the connection on the wire
// at once, not when its descriptor is closed with the next batch.
func TestCloseSendsFINBeforeTheBatch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := &Dialer{}
	d.closer.delay = time.Hour // the batch closes only at d.Close
	c, err := d.DialContext(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the peer read %d, %v after Close; want the FIN", n, err)
	}
	d.closer.mu.Lock()
	pending := len(d.closer.pending)
	d.closer.mu.Unlock()
	if pending != 1 {
		t.Errorf("%d descriptors wait for the batch, want the one closed", pending)
	}
	d.Close()
	d.closer.mu.Lock()
	pending = len(d.closer.pending)
	d.closer.mu.Unlock()
	if pending != 0 {
		t.Errorf("%d descriptors wait after the Dialer's Close", pending)
	}
}
