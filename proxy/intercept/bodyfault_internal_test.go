package intercept

import (
	"bufio"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testnet"
)

// TestFaultBodyCloseAfterTrailerRead: net/http's body closes itself
// inside the read that returns a trailer's error, so a Close after that
// read returns nil. A Close (nextHead's, before goproxy looks for the
// next head) that comes while the transport's writer has that read's
// error but has not noted it yet must still find the fault when it
// returns. Before, it returned at once with no fault: goproxy went on to
// the request buffered behind the trailer, unless the writer's note won
// the race to the RoundTrip gate.
func TestFaultBodyCloseAfterTrailerRead(t *testing.T) {
	client, server := testnet.TCPPair(t)
	go io.WriteString(client, "POST /a HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"3\r\nabc\r\n0\r\nbad line\r\nGET /smuggled HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
	req, err := http.ReadRequest(bufio.NewReader(server))
	if err != nil {
		t.Fatal(err)
	}
	cc := &hijackedConn{Conn: server}
	fb := watchBodyFault(req, cc)
	if fb == nil {
		t.Fatal("a chunked HTTP/1 body is not watched")
	}
	// The writer's read that fails is held between net/http's read
	// returning and faultBody's note, a moment the scheduler may
	// stretch at will.
	held, release := make(chan struct{}), make(chan struct{})
	var first sync.Once // the writer's read; not the close's, after it
	hook := func(b *faultBody) {
		if b == fb {
			first.Do(func() { close(held); <-release })
		}
	}
	testHookNoting.Store(&hook)
	t.Cleanup(func() { testHookNoting.Store(nil) })
	go io.Copy(io.Discard, fb) // the transport's writer
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the body's read did not fail at the trailer")
	}
	closed := make(chan struct{})
	go func() { fb.Close(); close(closed) }()
	select {
	case <-closed:
		if cc.bodyFault.Load() == nil {
			t.Error("Close returned with the trailer's error read but not noted: no fault on the connection")
		}
	case <-time.After(100 * time.Millisecond): // Close waits for the read's note
	}
	close(release)
	<-closed
	if p := cc.bodyFault.Load(); p == nil || !malformedBody(*p) {
		t.Errorf("connection's fault %v, want the trailer's", p)
	}
}
