package intercept

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// A tunnel whose client ended its side first waits for the destination's
// side to end (Close, upgradeDrain), and its record is written as soon as
// that wait ends. The read that ended it ended the wait from inside
// upgradedBody.Read, before goproxy's copy (recordingBody.Read) had
// counted the read: a destination's reset was recorded ok (its error not
// yet kept: 1 try in a few hundred in a loaded -race suite), and a last
// message that came with the destination's close_notify (a TLS 1.2
// server: one read returns both) was left out of bytes_in (83 of 3,000
// tries under -race, found by review r1s27 F1). goproxy's copy is a real
// goroutine here, as in production: a race, tried often.
func TestTunnelRecordAfterTheLastReadCounted(t *testing.T) {
	const tries = 300
	for _, tc := range []struct {
		name  string
		reset bool
	}{{"reset", true}, {"last message with close_notify", false}} {
		t.Run(tc.name, func(t *testing.T) {
			miss := 0
			for i := range tries {
				up, _, _ := tunnelTLSPairWith(t, tls.VersionTLS12, func(sc *tls.Conn, hw *heldWrites) {
					_, _ = io.Copy(io.Discard, sc) // until the tunnel's close_notify
					if tc.reset {
						tcp := hw.Conn.(*net.TCPConn)
						_ = tcp.SetLinger(0)
						tcp.Close()
						return
					}
					hw.setHold()
					_, _ = sc.Write(make([]byte, 1000))
					_ = sc.CloseWrite()
					_ = hw.release()
				})
				u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { return true }, ended: make(chan struct{}), tunnel: true}
				rb := &recordingBody{ReadCloser: u, tunnel: true}
				var (
					result, why string
					delivered   int64
				)
				recorded := make(chan struct{})
				rb.done = endFunc(func() {
					result, why, delivered = rb.outcome(context.Background(), nil, nil)
					close(recorded)
				})
				b := &recordingRWBody{recordingBody: rb, w: u}
				copied := make(chan int64)
				go func() {
					n, _ := io.Copy(io.Discard, b) // goproxy's copy toward the client
					copied <- n
				}()
				go b.Close() // goproxy's, the client's side having ended
				n := <-copied
				<-recorded
				switch {
				case tc.reset && result != "reset":
					miss++
					t.Logf("try %d: the destination reset the tunnel; its record says %s %q", i, result, why)
				case !tc.reset && (n != 1000 || delivered != n || result != "ok"):
					miss++
					t.Logf("try %d: %d bytes passed on to the client; the record says %s %q, bytes_in %d", i, n, result, why, delivered)
				}
			}
			if miss > 0 {
				t.Errorf("%d of %d tunnels recorded before the read that ended them was counted", miss, tries)
			}
		})
	}
}

// abortingClient is a session's client whose reset (the session's
// abort: Abort(s.Client)) runs onAbort first, as goproxy's upload copy,
// woken by that reset, closes the tunnel.
type abortingClient struct {
	net.Conn
	onAbort func()
}

func (c *abortingClient) Abort() { c.onAbort(); c.Conn.Close() }

// A reload that denies a tunnel as goproxy's copy reads the destination's
// bytes: the read's bytes do not go on, nor are they counted. They were
// counted first and taken off after the reload's check, which aborts the
// session: the abort ends goproxy's other copy, which closes the tunnel,
// and its record, written meanwhile, counted bytes the client never had
// (bytes_in 1000, the final count 0: review r1s27 F2). Here the close
// runs within the abort, to the record.
func TestTunnelReloadDeniedReadNotCounted(t *testing.T) {
	parse := func(name, rule string) *policy.Policy {
		p, err := policy.Parse(name, []byte("policy:\n  default: deny\n  rules:\n    - "+rule+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	before := parse("a.yaml", "{name: named, domains: [www.example.test], action: bump}")
	after := parse("b.yaml", "{name: other, domains: [other.example.test], action: bump}")
	holder := &policy.Holder{}
	holder.Store(before)
	ic := New(Config{Policy: holder})

	upEnd, destEnd := net.Pipe()
	defer destEnd.Close()
	clientEnd, proxySide := net.Pipe()
	defer clientEnd.Close()
	u := &upgradedBody{br: bufio.NewReader(upEnd), conn: upEnd, stop: func() bool { return true }, ended: make(chan struct{})}
	rb := &recordingBody{ReadCloser: u, tunnel: true}
	recorded := make(chan struct{})
	var delivered int64 = -1
	rb.done = endFunc(func() {
		_, _, delivered = rb.outcome(context.Background(), nil, nil)
		close(recorded)
	})
	client := &abortingClient{Conn: proxySide}
	s := &session{Session: &Session{Client: client, Record: &records.Record{Kind: "tls"}, Start: time.Now()}, ic: ic}
	var r tunnelReload
	reload := r.init(s, before, policy.Subject{Domain: "www.example.test", Dest: netip.MustParseAddrPort("192.0.2.10:443")}, &records.Record{}, destVouch{}, false)
	rb.reload = reload // as roundTrip wires a tunnel
	b := &recordingRWBody{recordingBody: rb, w: u, reload: reload}
	client.onAbort = func() {
		go b.Close()
		select {
		case <-recorded:
		case <-time.After(5 * time.Second):
			t.Error("no record within 5 s of the abort")
		}
	}
	go func() { _, _ = destEnd.Write(make([]byte, 1000)) }()
	holder.Store(after) // the reload, which denies the tunnel
	n, err := b.Read(make([]byte, 32<<10))
	if n != 0 || !errors.Is(err, errTunnelReloadDenied) {
		t.Fatalf("the read after the reload: %d bytes, %v; want none, denied", n, err)
	}
	if delivered != 0 {
		t.Errorf("bytes_in %d: the read the reload denied never went to the client", delivered)
	}
}

// A destination whose read failed (a record that does not decrypt: a TLS
// failure, no errno) did not end its side: the tunnel's client is not
// told a clean end (close_notify, FIN) here (goproxy's close of it then
// resets it: TestTunnelDestinationFailureResetsClient), nor does the tunnel wait for the
// client's upload as it would after the destination's end. It was (review
// r1s27 F3), and the tls record said the client had not ended its side
// while the tunnel's said the destination failed.
func TestTunnelDestinationFailureNotRelayedAsItsEnd(t *testing.T) {
	defer SetTunnelLingerBound(300 * time.Millisecond)()
	up, _, _ := tunnelTLSPairWith(t, 0, func(_ *tls.Conn, hw *heldWrites) {
		record := append([]byte{23, 3, 3, 0, 40}, make([]byte, 40)...)
		_, _ = hw.Conn.Write(record)
	})
	u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { return true }, ended: make(chan struct{}), tunnel: true}
	u.upload = &uploadCopy{} // goproxy's upload copy, still under way
	told := false
	u.endClient = func() bool { told = true; return true }
	rb := &recordingBody{ReadCloser: u, tunnel: true}
	var result string
	rb.done = endFunc(func() { result, _, _ = rb.outcome(context.Background(), nil, nil) })
	b := &recordingRWBody{recordingBody: rb, w: u}
	if _, err := b.Read(make([]byte, 32<<10)); err == nil || err == io.EOF {
		t.Fatalf("the destination's broken record read as %v", err)
	}
	_ = b.Close()
	if told {
		t.Error("a destination whose read failed had its failure relayed to the client as the end of its side")
	}
	if result != "error" {
		t.Errorf("the tunnel's record says %s, want error", result)
	}
}

// failingClientWriter is a tunnel's client connection whose write fails
// (the client reset after its FIN), after the record, if the record comes
// within wait; it says whether it did.
type failingClientWriter struct {
	recorded       <-chan struct{}
	wait           time.Duration
	sawRecordFirst bool
}

func (w *failingClientWriter) Write([]byte) (int, error) {
	select {
	case <-w.recorded:
		w.sawRecordFirst = true
	case <-time.After(w.wait):
	}
	return 0, syscall.ECONNRESET
}

// TestTunnelBytesInCountsOnlyWrittenToClient: a tunnel's bytes_in counts
// what goproxy's copy wrote to the client, not what it read from the
// destination: a last message that came with the destination's end
// (TLS 1.2: one read), whose write to the client then failed, was
// counted, the record written as soon as the read had ended the
// direction, before the write (bytes_in 1000, 0 written; 3 of 3). The
// direction ends once the write has returned, and the record after it.
func TestTunnelBytesInCountsOnlyWrittenToClient(t *testing.T) {
	up, _, _ := tunnelTLSPairWith(t, tls.VersionTLS12, func(sc *tls.Conn, hw *heldWrites) {
		_, _ = io.Copy(io.Discard, sc) // until the tunnel's close_notify
		hw.setHold()
		_, _ = sc.Write(make([]byte, 1000))
		_ = sc.CloseWrite()
		_ = hw.release()
	})
	u := &upgradedBody{br: bufio.NewReader(up), conn: up, stop: func() bool { return true }, ended: make(chan struct{}), tunnel: true}
	rb := &recordingBody{ReadCloser: u, tunnel: true}
	var (
		result    string
		delivered int64
	)
	recorded := make(chan struct{})
	rb.done = endFunc(func() {
		result, _, delivered = rb.outcome(context.Background(), nil, nil)
		close(recorded)
	})
	b := &recordingRWBody{recordingBody: rb, w: u}
	w := &failingClientWriter{recorded: recorded, wait: 300 * time.Millisecond}
	copied := make(chan int64)
	go func() {
		n, _ := io.Copy(w, b) // goproxy's copy toward the client
		copied <- n
	}()
	go b.Close() // goproxy's, the client's side having ended
	n := <-copied
	<-recorded
	if w.sawRecordFirst || delivered != n || n != 0 {
		t.Errorf("record %s, bytes_in %d; the copy wrote %d to the client; the record came before the write returned: %v",
			result, delivered, n, w.sawRecordFirst)
	}
}
