package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// The drain's words ("ended by the appliance's shutdown") are for flows
// the stacks' close ended, not for every flow recorded once the stacks are
// closing (review rev32a F3): a client that reset its connection, or whose
// port answered unreachable, just before the drain's end was recorded as
// ended by the shutdown, "...: connection reset by peer". Each test here
// calls StacksClosing first, then has the client end its flow while the
// stacks are still open, and only closes them once the record is written:
// the window the reviewer's probe hit now and then, held open.

// TestDrainWordsNotForClientsReset: a TCP connection still waiting for its
// first bytes (dialled first, or with nothing dialled when only a name
// could allow it) that its client resets is recorded as its client's
// reset. TestDrainEndsWaitingConnectionsRecorded has those the close ends.
func TestDrainWordsNotForClientsReset(t *testing.T) {
	for _, tc := range waitingPolicies {
		t.Run(tc.name, func(t *testing.T) {
			r := newBumpStallRigPolicy(t, tc.policy, time.Hour, func(*bumpStallRig, http.ResponseWriter, *http.Request) {})
			c := dialRaw(t, r.client, r.dest)
			// A ClientHello cut short keeps the connection waiting; the
			// appliance's acknowledging it says its end of the handshake
			// is done (a reset before then ends the handshake, not the
			// wait).
			segs := &c.ep.Stats().(*tcp.Stats).SegmentsReceived
			before := segs.Value()
			if _, err := io.WriteString(c, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for segs.Value() == before && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if segs.Value() == before {
				t.Fatal("the appliance acknowledged nothing of the ClientHello cut short")
			}
			r.p.StacksClosing()
			c.reset()
			rec := r.sink.records(t, 1)[0]
			r.ns.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := r.p.Wait(ctx); err != nil {
				t.Fatalf("the connection did not end: %v", err)
			}
			if rec.Kind != "tcp" || rec.Result != "reset" || strings.HasPrefix(rec.Error, errShutdown.Error()) || !strings.Contains(rec.Error, "connection reset by peer") {
				t.Errorf("record kind %s result %s error %q; want tcp, reset, the client's reset and no word of the shutdown", rec.Kind, rec.Result, rec.Error)
			}
		})
	}
}

// TestDrainWordsNotForClientsUnreachable: a UDP flow, and a QUIC flow at
// its gate, whose client's port answered unreachable are recorded as the
// client's closing, not the shutdown's, once the stacks are closing as
// before; TestUDPShutdownRecorded and TestQUICGateEndRecorded have those
// the close ends.
func TestDrainWordsNotForClientsUnreachable(t *testing.T) {
	t.Run("udp", func(t *testing.T) {
		echo := newUDPSink(t, true)
		p, _, recs := udpProxy(t, "policy: {default: allow}\n", func(cfg *Config) { cfg.UDPIdleTimeout = 30 * time.Second })
		c, _ := startFlow(p, netip.MustParseAddrPort("198.18.0.6:40001"), echo.addr(), []byte("stream please"))
		<-c.out // the destination answers: the flow is live
		p.StacksClosing()
		c.failRead(syscall.ECONNREFUSED)
		r := recs.records(t, 1)[0]
		if r.Kind != "udp" || r.Result != "ok" || r.Error != "" {
			t.Errorf("record kind %s result %s error %q; want udp, ok, no error: its client closed its socket", r.Kind, r.Result, r.Error)
		}
	})
	t.Run("quic gate", func(t *testing.T) {
		flight := quicFirstFlight(t, "www.example.test")
		if len(flight) < 2 {
			t.Skip("quic-go's ClientHello fits one datagram here: the gate holds nothing")
		}
		p, _, recs := udpProxy(t, quicPolicy, nil)
		dst := newUDPSink(t, false)
		c, _ := startFlow(p, quicClient, dst.addr(), flight[0])
		deadline := time.Now().Add(5 * time.Second)
		for p.Stats().QUICGateActive != 1 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		p.StacksClosing()
		c.failRead(syscall.ECONNREFUSED)
		r := recs.records(t, 1)[0]
		const want = "the flow ended before its QUIC ClientHello was read"
		if r.Kind != "quic" || r.Result != "reset" || r.Error != want {
			t.Errorf("record kind %s result %s error %q; want quic, reset, %q", r.Kind, r.Result, r.Error, want)
		}
	})
}

// TestDrainWordsNotForInterceptedClientsReset: an intercepted HTTP/1
// request under way (its origin silent) whose client resets once the
// stacks are closing, the stacks still open, is recorded as its client's
// break, not the shutdown's (review rev32c F2: the client watch went by
// the flag alone). TestStackCloseEndsInterceptedSessions has those the
// close ends.
func TestDrainWordsNotForInterceptedClientsReset(t *testing.T) {
	r := newStallRig(t, time.Hour)
	dest, got, closed := silentOrigin(t, "")
	c := dialRaw(t, r.client, dest)
	if _, err := io.WriteString(c, "GET /poll HTTP/1.1\r\nHost: origin.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	wait(t, got, 5*time.Second, "the request did not reach the origin")
	r.p.StacksClosing()
	c.reset()
	wait(t, closed, 5*time.Second, "the origin's connection is still open")
	rec, ok := httpRecord(t, r.sink, 5*time.Second)
	r.ns.Close()
	if !ok {
		t.Fatal("no http record")
	}
	if rec.Result != "reset" || strings.Contains(rec.Error, errShutdown.Error()) || !strings.Contains(rec.Error, "the client's connection broke: connection reset by peer") {
		t.Errorf("record result %s error %q; want reset, the client's break and no word of the shutdown", rec.Result, rec.Error)
	}
}

// TestDrainWordsNotForClientsResetAfterFIN: a relayed flow whose client
// sent its upload and FIN, which the destination read to the end, and then
// reset its connection once the stacks were closing, the stacks still
// open, is recorded as its client's break after its FIN, and its
// destination closed, not reset: it had the whole upload (review rev32c
// F3). gVisor reports a RST in CLOSE-WAIT with the error of its own abort,
// "operation aborted", which the stacks' close gives: the record said
// "ended by the appliance's shutdown (its packet stacks closed): operation
// aborted", and the relay, going by the drain's flag alone, reset the
// destination. TestShutdownEndsFlowWhoseClientSentFIN has the flow the
// close ends.
func TestDrainWordsNotForClientsResetAfterFIN(t *testing.T) {
	r, srv := shutdownRig(t)
	eof := make(chan *net.TCPConn, 1)
	dst := destination(t, func(c *net.TCPConn) {
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("the destination's read of the upload: %v", err)
		}
		eof <- c
		time.Sleep(20 * time.Second) // open, until the test's end
	})
	c := dialRaw(t, r.client, dst)
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	if err := c.halfClose(); err != nil {
		t.Fatal(err)
	}
	var dc *net.TCPConn
	select {
	case dc = <-eof:
	case <-time.After(5 * time.Second):
		t.Fatal("the client's FIN did not reach the destination")
	}
	r.p.StacksClosing()
	c.reset()
	rec, ok := r.record(t, 5*time.Second)
	// A reset destination's socket is closed (TCP_CLOSE); one the relay
	// closed cleanly, its FIN read, stays in CLOSE-WAIT. A read cannot
	// tell: once the FIN is in, Linux says the end of the stream first.
	state := tcpStateOf(t, dc)
	srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := r.p.Wait(ctx); err != nil {
		t.Fatalf("the flow did not end: %v", err)
	}
	if !ok {
		t.Fatal("no record within 5 s of the client's reset (the stacks open)")
	}
	const want = "the client's connection broke after its FIN: connection reset by peer after its FIN"
	if rec.Kind != "tcp" || rec.Result != "reset" || rec.Error != want {
		t.Errorf("record kind %s result %s error %q; want tcp, reset, %q", rec.Kind, rec.Result, rec.Error, want)
	}
	if state != unix.BPF_TCP_CLOSE_WAIT {
		t.Errorf("the destination's socket is in TCP state %d once the record is written; want CLOSE-WAIT (%d): it had the whole upload, and is closed, not reset", state, unix.BPF_TCP_CLOSE_WAIT)
	}
}

// tcpStateOf is c's TCP state, as TCP_INFO says it.
func tcpStateOf(t *testing.T, c *net.TCPConn) uint8 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		ti   *unix.TCPInfo
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { ti, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return ti.State
}
