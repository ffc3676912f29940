package intercept

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/certs"
)

// tlsUpstream returns a TLS connection to a loopback destination, and the
// destination's end of it.
func tlsUpstream(t *testing.T) (up *tls.Conn, dest *tls.Conn) {
	t.Helper()
	ca, err := certs.Generate("upload copy test CA")
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.NewMinter(ca, certs.MinterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := m.LeafFor([]string{"up.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, peer := tcpPair(t)
	t.Cleanup(func() { raw.Close(); peer.Close() })
	dest = tls.Server(peer, &tls.Config{Certificates: []tls.Certificate{*leaf}})
	hs := make(chan error, 1)
	go func() { hs <- dest.Handshake() }()
	up = tls.Client(raw, &tls.Config{ServerName: "up.example", InsecureSkipVerify: true})
	if err := up.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	return up, dest
}

// A tunnel's end waits for goproxy's copy of the upload to reach the
// client's end before its close_notify goes out. goproxy ends the tunnel
// on the other direction's end (a client that reset after its FIN: a ping
// to it fails) while its copy of the upload still has bytes the appliance
// acknowledged to write; the close_notify went out once the write in
// flight, if any, had returned, and the copy's next write met "tls:
// protocol is shutdown": the destination never got the rest.
func TestTunnelEndWaitsForTheUploadCopy(t *testing.T) {
	defer SetTunnelLingerBound(5 * time.Second)()
	up, dest := tlsUpstream(t)
	var upload uploadCopy
	u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { return true },
		ended: make(chan struct{}), tunnel: true}
	u.holdUpload(&upload, nil, nil)
	got := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, dest) // to the close_notify
		got <- n
	}()
	first, rest := make([]byte, 64<<10), make([]byte, 32<<10)
	if _, err := u.Write(first); err != nil {
		t.Fatal(err)
	}

	// The tunnel's end, with the rest of the upload still to be copied.
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		u.halfCloseUpstream()
	}()
	// The copy reads the client's last bytes and its end, and writes
	// them, once the tunnel's end is under way: it has gone out, or it
	// waits for the copy.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		select {
		case <-ended:
		default:
			upload.mu.Lock()
			waiting := upload.done != nil
			upload.mu.Unlock()
			if !waiting && time.Now().Before(deadline) {
				continue
			}
		}
		break
	}
	upload.readEnded(len(rest))
	if _, err := u.Write(rest); err != nil {
		t.Errorf("the upload's last write, after the client's end was read: %v; want it written before the tunnel's end", err)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the tunnel's end did not go out once the upload's copy was over")
	}
	if n := <-got; n != int64(len(first)+len(rest)) {
		t.Errorf("the destination read %d bytes before the tunnel's end, want the whole upload's %d", n, len(first)+len(rest))
	}
	if u.writeCut() != nil {
		t.Errorf("a write was cut: %v", u.writeCut())
	}
}

// The copy is over once a read has ended and what it returned is written,
// or once a write fails; not before.
func TestUploadCopyOver(t *testing.T) {
	isOver := func(c *uploadCopy) bool {
		select {
		case <-c.over():
			return true
		default:
			return false
		}
	}
	var c uploadCopy
	c.wrote(10, nil)
	if isOver(&c) {
		t.Fatal("over after a write, with no end read")
	}
	c.readEnded(20)
	c.wrote(15, nil)
	if isOver(&c) {
		t.Fatal("over with 5 bytes of the end's read unwritten")
	}
	c.wrote(5, nil)
	if !isOver(&c) {
		t.Fatal("not over once the end's read was written")
	}

	var e uploadCopy
	ch := e.over()
	e.readEnded(0)
	select {
	case <-ch:
	default:
		t.Fatal("not over after an end read with no bytes")
	}

	var w uploadCopy
	w.wrote(3, net.ErrClosed)
	if !isOver(&w) {
		t.Fatal("not over after a failed write")
	}
}
