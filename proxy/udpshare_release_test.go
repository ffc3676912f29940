package proxy

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
)

// shareClient is the client of the share tests, whose share is one flow.
var shareClient = netip.MustParseAddr("198.18.0.5")

// nextFlowRelayed starts another flow of shareClient and wants it relayed
// to dst (an echoing sink): the client's share is free. A flow over the
// share is dropped, its client end closed at once.
func nextFlowRelayed(t *testing.T, p *Proxy, dst *udpSink) {
	t.Helper()
	c, _ := startFlow(p, netip.AddrPortFrom(shareClient, 2), dst.addr(), []byte("next"))
	select {
	case <-c.out:
	case <-c.ended:
		t.Fatalf("the client's next flow was dropped (%d share drops): the failed flow kept its share", p.Stats().UDPShareDrops)
	case <-time.After(5 * time.Second):
		t.Fatal("the client's next flow was neither relayed nor dropped")
	}
}

// TestUDPFirstReadErrorGivesShareBack: a flow whose first datagram cannot
// be read gives its slot of the client's share back. Kept, each such flow
// would hold a slot for ever, and after --max-udp-flows-per-client of them
// all of the client's UDP (its DNS included) would be dropped.
func TestUDPFirstReadErrorGivesShareBack(t *testing.T) {
	dst := newUDPSink(t, true)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) { cfg.MaxUDPFlowsPerClient = 1 })
	client := netip.AddrPortFrom(shareClient, 1)
	c := newFakeUDPClient(client, dst.addr())
	c.readErr = errors.New("test: read failed")
	p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: client, Dest: dst.addr()}, c)
	if got := recs.records(t, 1); len(got) != 1 || !strings.Contains(got[0].Error, "test: read failed") {
		t.Fatalf("records %+v, want the failed read's", got)
	}
	nextFlowRelayed(t, p, dst)
}

// TestUDPDialErrorGivesShareBack: a flow whose host socket cannot be
// opened gives its slot of the client's share back. A client can cause
// such failures (an unroutable IPv6 destination, EMFILE under load).
// No loopback destination fails to dial and the UDP dial has no hook, so
// the socket is made to fail with EMFILE: the soft RLIMIT_NOFILE is
// lowered, process-wide, for the length of one flow (the package's tests
// do not run in parallel). Another goroutine closing a descriptor in that
// window lets the dial succeed: the flow is then tried again, a few times.
func TestUDPDialErrorGivesShareBack(t *testing.T) {
	dst := newUDPSink(t, true)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) {
		cfg.MaxUDPFlowsPerClient = 1
		cfg.UDPIdleTimeout = 200 * time.Millisecond // a dial that succeeds anyway ends soon
	})
	client := netip.AddrPortFrom(shareClient, 1)
	failed := false
	for attempt := 1; attempt <= 3 && !failed; attempt++ {
		c := newFakeUDPClient(client, dst.addr())
		c.inject([]byte("x"))
		undo := exhaustFDs(t)
		p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: client, Dest: dst.addr()}, c)
		undo()
		got := recs.records(t, attempt)
		if len(got) != attempt {
			t.Fatalf("%d records after %d flows", len(got), attempt)
		}
		failed = strings.Contains(got[attempt-1].Error, "too many open files")
	}
	if !failed {
		t.Skip("the dial never failed with EMFILE: descriptors were closed under the test")
	}
	nextFlowRelayed(t, p, dst)
}

// exhaustFDs lowers the soft RLIMIT_NOFILE to a few above the descriptors
// open and opens descriptors up to it, so that the next socket fails with
// EMFILE. undo, also run by t.Cleanup, restores the limit and closes them.
func exhaustFDs(t *testing.T) (undo func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("open descriptors: %v", err)
	}
	lim := old
	lim.Cur = uint64(len(ents) + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	var fill []*os.File
	var once sync.Once
	undo = func() {
		once.Do(func() {
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
				t.Errorf("restoring RLIMIT_NOFILE: %v", err)
			}
			for _, f := range fill {
				f.Close()
			}
		})
	}
	t.Cleanup(undo)
	for range 1000 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
	}
	return undo
}

// TestUDPShareEntryGoesWithLastFlow: a client's share entry is removed
// once it holds no flow, so that the map holds only clients with flows
// open. Kept, it would grow by an entry for each client (each IPv6 /80)
// ever seen.
func TestUDPShareEntryGoesWithLastFlow(t *testing.T) {
	dst := newUDPSink(t, false)
	p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) { cfg.UDPIdleTimeout = 200 * time.Millisecond })
	for port := uint16(1); port <= 3; port++ {
		startFlow(p, netip.AddrPortFrom(shareClient, port), dst.addr(), []byte("x"))
	}
	for _, r := range recs.records(t, 3) {
		if r.Action != "allow" || r.Result != "ok" {
			t.Fatalf("record %+v, want the flow relayed (holding a share) and idled", r)
		}
	}
	entries := func() int {
		p.udp.shares.mu.Lock()
		defer p.udp.shares.mu.Unlock()
		return len(p.udp.shares.m)
	}
	waitUntil(t, 5*time.Second, func() bool { return entries() == 0 }, "the share entry of a client with no flow open to go")
}
