package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/hostconn"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// TestBreakBeforeFINNotWaitingSaysNoWait: a client sends a little and
// resets (no FIN) while the relay's copy of it is busy (its reload check
// under way here), no write to the destination waiting: the relay resets
// the destination for the break, and its record said `its upload waiting
// on the destination`, blaming a destination that took all it was given
// (16 of 60 such uploads, in the review). It says the break alone.
func TestBreakBeforeFINNotWaitingSaysNoWait(t *testing.T) {
	r := &relayRig{h: &acceptAll{conns: make(chan *netstack.Conn, 1)}}
	_, ep := simulatedEndpointTCP(t, r.h, false, netstack.TCPOptions{})
	var err error
	if r.client, err = ep.NewClientStack(netip.MustParseAddr("198.18.0.5")); err != nil {
		t.Fatal(err)
	}
	cep, conn := r.dialEndpoint(t, 4100)
	upSide, server := loopbackPair(t)
	checking, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	recheck := func() error {
		select {
		case <-checking:
		default:
			close(checking)
			<-release
		}
		return nil
	}
	done := make(chan error, 1)
	startWatchedRelay(&peekedConn{Conn: conn}, hostconn.Wrap(upSide), newStallWatch(0), recheck, nil,
		func(_ relayCounts, err error) { done <- err })
	destEnded := make(chan error, 1)
	go func() {
		_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, server)
		destEnded <- err
	}()
	var rd strings.Reader
	rd.Reset("a little upload")
	if _, terr := cep.Write(&rd, tcpip.WriteOptions{}); terr != nil {
		t.Fatal(terr)
	}
	select {
	case <-checking:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not read the upload")
	}
	cep.Abort() // the client's reset, its FIN never sent
	select {
	case err := <-destEnded:
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("destination's read ended by %v, want the relay's reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the destination was not reset")
	}
	once.Do(func() { close(release) })
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "the client's connection broke before its FIN") ||
			strings.Contains(err.Error(), "waiting on the destination") {
			t.Errorf("relay ended with %v, want the client's break before its FIN, no write having waited", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay not ended")
	}
}
