package netstack

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// holdingHandler holds every TCP request it gets, as a proxy dialling a
// destination holds it (or as a client that never completes its handshake
// makes Accept wait), until released; then it rejects it.
type holdingHandler struct {
	testHandler
	got     chan netip.AddrPort
	release chan struct{}
}

func (h *holdingHandler) HandleTCP(req *TCPRequest) {
	h.got <- req.Flow.Client
	<-h.release
	req.Reject()
}

// TestSetupSlotsShared: once half of a stack's slots for connections being
// set up are taken, a client holding its fair share gets a RST for a new
// attempt, and another client still gets in. Before, a few clients whose
// handshakes never completed held every slot, for every client of the
// endpoint, for about a minute each.
func TestSetupSlotsShared(t *testing.T) {
	h := &holdingHandler{got: make(chan netip.AddrPort, 16), release: make(chan struct{})}
	s := startServer(t, Config{Handler: h, TCP: TCPOptions{MaxInFlight: 8}}) // pressure at 4; a fair share of 1
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	dest := netip.MustParseAddrPort("198.18.9.9:443")
	a, b := netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("198.18.0.6")
	syn := func(c netip.Addr, port uint16) {
		s.handleDatagram(geneve(7, clientSegment(netip.AddrPortFrom(c, port), dest, 1000, 0, header.TCPFlagSyn, nil)), from, nil)
	}
	waitGot := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-h.got:
			case <-time.After(5 * time.Second):
				t.Fatalf("the handler did not get an attempt; stats %+v", s.Stats())
			}
		}
	}
	for i := range 6 { // a burst: the first 4 get in
		syn(a, uint16(41000+i))
	}
	waitGot(4)
	syn(b, 42000) // another client: in, though the slots run short
	waitGot(1)
	syn(b, 42001) // now at its share
	waitUntil(t, 5*time.Second, "3 refused (2 of the burst, the other client's second) and 5 handed over", func() (bool, string) {
		st := s.Stats()
		return st.TCPSetupsRefused == 3 && st.TCPConnections == 5, fmt.Sprintf("refused %d, attempts %d", st.TCPSetupsRefused, st.TCPConnections)
	})
	close(h.release) // the held attempts end: their slots come back
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := s.Stats()
		syn(a, 43000)
		select {
		case <-h.got:
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no attempt got in after the slots came back; stats %+v", st)
		}
	}
}

// forgetfulHandler neither accepts nor rejects: the stack completes the
// request itself when HandleTCP returns.
type forgetfulHandler struct {
	testHandler
	got chan struct{}
}

func (h *forgetfulHandler) HandleTCP(*TCPRequest) { h.got <- struct{}{} }

// TestSetupSlotsGivenBack: an attempt's share comes back however it ends,
// also when the handler forgets it; else a client would run out of shares
// for good.
func TestSetupSlotsGivenBack(t *testing.T) {
	h := &forgetfulHandler{got: make(chan struct{}, 1)}
	s := startServer(t, Config{Handler: h, TCP: TCPOptions{MaxInFlight: 2}}) // pressure at 1; a fair share of 1
	from := netip.MustParseAddrPort("127.0.0.2:40000")
	dest := netip.MustParseAddrPort("198.18.9.9:443")
	client := netip.MustParseAddr("198.18.0.5")
	for i := range 20 {
		s.handleDatagram(geneve(7, clientSegment(netip.AddrPortFrom(client, uint16(41000+i)), dest, 1000, 0, header.TCPFlagSyn, nil)), from, nil)
		select {
		case <-h.got:
		case <-time.After(5 * time.Second):
			t.Fatalf("attempt %d not handed over; stats %+v", i, s.Stats())
		}
		waitUntil(t, 5*time.Second, "the share back", func() (bool, string) {
			v, _ := s.stacks.Load(uint64(7))
			st := v.(*endpointStack)
			st.setups.mu.Lock()
			defer st.setups.mu.Unlock()
			return st.setups.total == 0, fmt.Sprintf("%d held", st.setups.total)
		})
	}
	if n := s.Stats().TCPSetupsRefused; n != 0 {
		t.Fatalf("%d attempts refused", n)
	}
}
