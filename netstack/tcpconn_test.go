package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// connRig is a netstack server on loopback, a simulated GWLB in front of
// it, and a client stack behind the simulator.
type connRig struct {
	t      *testing.T
	h      *netstack.AcceptHandler
	client *gwlbsim.ClientStack
	srv    *netstack.Server
	sim    *gwlbsim.Sim
}

var (
	connClient = netip.MustParseAddr("198.18.0.5")
	connDest   = netip.AddrPortFrom(netip.MustParseAddr("198.18.9.9"), 80)
)

// waitFor is how long any one thing the tests wait for may take.
const waitFor = 5 * time.Second

func newConnRig(t *testing.T) *connRig {
	t.Helper()
	return newConnRigTCP(t, netstack.TCPOptions{})
}

// newConnRigTCP is newConnRig with the server's TCP tuned by opts.
func newConnRigTCP(t *testing.T, opts netstack.TCPOptions) *connRig {
	t.Helper()
	r := &connRig{t: t, h: &netstack.AcceptHandler{Conns: make(chan *netstack.Conn, 1)}}
	// The simulator receives replies on a port of its own: take a free one
	// and retry, in case another test took it between.
	var sim *gwlbsim.Sim
	var srv *netstack.Server
	for attempt := 0; sim == nil; attempt++ {
		port := freeUDPPort(t)
		s, err := netstack.Listen(netstack.Config{
			ListenAddr: "127.0.0.1:0", Readers: 1, ReplyPort: port,
			ReturnPath: netstack.ReturnPathBound, Handler: r.h, TCP: opts,
		})
		if err != nil {
			t.Fatal(err)
		}
		sim, err = gwlbsim.New(gwlbsim.Config{
			Addr: netip.MustParseAddr("127.0.0.1"), ListenPort: port, Appliance: s.Addr(), Senders: 2,
		})
		if err != nil {
			s.Close()
			if attempt == 4 {
				t.Fatalf("starting the simulator: %v", err)
			}
			continue
		}
		srv = s
	}
	served := make(chan struct{})
	go func() { srv.Serve(); close(served) }()
	t.Cleanup(func() {
		sim.Close()
		srv.Close()
		<-served
	})
	r.srv, r.sim = srv, sim
	var err error
	if r.client, err = sim.Endpoint(0x0123456789abcdef, 0x1111222233334444).NewClientStack(connClient); err != nil {
		t.Fatal(err)
	}
	return r
}

func freeUDPPort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

// accepted returns the server's end of the connection just dialed.
func (r *connRig) accepted() *netstack.Conn {
	r.t.Helper()
	select {
	case c := <-r.h.Conns:
		r.t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(waitFor):
		r.t.Fatal("no connection reached the handler")
		return nil
	}
}

// dial connects the client and returns both ends.
func (r *connRig) dial() (*gonet.TCPConn, *netstack.Conn) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cc, err := r.client.DialTCP(ctx, connDest)
	if err != nil {
		r.t.Fatalf("dialing through the simulator: %v", err)
	}
	r.t.Cleanup(func() { cc.Close() })
	return cc, r.accepted()
}

// dialEndpoint connects the client as dial does, and also returns the
// client's endpoint, whose Abort sends a RST (gonet offers no way to).
func (r *connRig) dialEndpoint() (*gonet.TCPConn, tcpip.Endpoint, *netstack.Conn) {
	r.t.Helper()
	var wq waiter.Queue
	ep, terr := r.client.Stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		r.t.Fatalf("client endpoint: %s", terr)
	}
	ent, ch := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&ent)
	defer wq.EventUnregister(&ent)
	terr = ep.Connect(tcpip.FullAddress{Addr: tcpip.AddrFrom4(connDest.Addr().As4()), Port: connDest.Port()})
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ch:
		case <-time.After(waitFor):
			ep.Close()
			r.t.Fatal("the client's connection did not complete")
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		r.t.Fatalf("connecting: %s", terr)
	}
	cc := gonet.NewTCPConn(&wq, ep)
	r.t.Cleanup(func() { cc.Close() })
	return cc, ep, r.accepted()
}

// notifier counts OnReadable's calls and signals each on a channel of one
// slot, so that a call between a reader's last TryRead and its wait is not
// lost.
type notifier struct {
	calls atomic.Int64
	ch    chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: make(chan struct{}, 1)} }

func (n *notifier) fn() {
	n.calls.Add(1)
	select {
	case n.ch <- struct{}{}:
	default:
	}
}

// wait waits for a call, failing the test after waitFor.
func (n *notifier) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-n.ch:
	case <-time.After(waitFor):
		t.Fatalf("OnReadable was not called for %s", what)
	}
}

// waitReadable waits (bounded) for c to say it is readable; it is for
// when no call is expected to tell.
func waitReadable(t *testing.T, c *netstack.Conn, what string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !c.Readable() {
		if time.Now().After(deadline) {
			t.Fatalf("the connection did not become readable: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// readAll reads from c with TryRead, parking on OnReadable's calls (n's)
// when nothing waits, until io.EOF, another error, or limit bytes.
func readAll(t *testing.T, c *netstack.Conn, n *notifier, limit int) ([]byte, error) {
	t.Helper()
	var got []byte
	buf := make([]byte, 32<<10)
	for len(got) < limit {
		k, err := c.TryRead(buf)
		got = append(got, buf[:k]...)
		switch {
		case errors.Is(err, netstack.ErrWouldBlock):
			if k != 0 {
				t.Fatalf("TryRead returned %d bytes with ErrWouldBlock", k)
			}
			n.wait(t, "more bytes")
		case err != nil:
			return got, err
		}
	}
	return got, nil
}

// clientRead reads what the server sent to the client until the client
// has want bytes or an error.
func clientRead(t *testing.T, cc net.Conn, want int) ([]byte, error) {
	t.Helper()
	cc.SetReadDeadline(time.Now().Add(waitFor))
	got := make([]byte, want)
	n, err := io.ReadFull(cc, got)
	return got[:n], err
}

// TestConnTryReadReadiness: a quiet connection has nothing to read and
// says so; bytes the client sends are announced, seen by Readable, and
// read whole by TryRead, which then has nothing again.
func TestConnTryReadReadiness(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	buf := make([]byte, 64)
	if k, err := c.TryRead(buf); !errors.Is(err, netstack.ErrWouldBlock) || k != 0 {
		t.Fatalf("TryRead of a quiet connection: %d, %v; want 0, ErrWouldBlock", k, err)
	}
	if c.Readable() {
		t.Fatal("a quiet connection is Readable")
	}
	n := newNotifier()
	c.OnReadable(n.fn)
	if c.Readable() {
		t.Fatal("a quiet connection is Readable after OnReadable")
	}
	if _, err := cc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	n.wait(t, `"hello"`)
	if !c.Readable() {
		t.Fatal("not Readable after OnReadable announced bytes")
	}
	k, err := c.TryRead(buf)
	if err != nil || string(buf[:k]) != "hello" {
		t.Fatalf("TryRead: %q, %v; want \"hello\"", buf[:k], err)
	}
	if k, err := c.TryRead(buf); !errors.Is(err, netstack.ErrWouldBlock) || k != 0 {
		t.Fatalf("TryRead once drained: %d, %v; want 0, ErrWouldBlock", k, err)
	}
	if c.Readable() {
		t.Fatal("Readable once drained")
	}
	// A zero-length read neither waits nor fails.
	if k, err := c.TryRead(nil); k != 0 || err != nil {
		t.Fatalf("TryRead(nil): %d, %v", k, err)
	}
}

// TestConnTryReadStream: a MiB sent in writes of random sizes, read with
// TryRead and OnReadable only, arrives whole and in order, and the
// client's FIN after it reads as io.EOF.
func TestConnTryReadStream(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	var chunks []int
	for off := 0; off < len(data); {
		k := min(1+rng.IntN(20000), len(data)-off)
		chunks = append(chunks, k)
		off += k
	}
	n := newNotifier()
	c.OnReadable(n.fn)
	wrote := make(chan error, 1)
	go func() {
		cc.SetWriteDeadline(time.Now().Add(4 * waitFor))
		off := 0
		for _, k := range chunks {
			if _, err := cc.Write(data[off : off+k]); err != nil {
				wrote <- err
				return
			}
			off += k
		}
		wrote <- cc.CloseWrite()
	}()
	got, err := readAll(t, c, n, len(data)+1)
	if err != io.EOF {
		t.Errorf("the stream ended with %v, want io.EOF", err)
	}
	if werr := <-wrote; werr != nil {
		t.Fatalf("the client's writes: %v", werr)
	}
	if !bytes.Equal(got, data) {
		i := 0
		for i < min(len(got), len(data)) && got[i] == data[i] {
			i++
		}
		t.Fatalf("read %d bytes of %d, first difference at %d", len(got), len(data), i)
	}
	if n.calls.Load() == 0 {
		t.Fatal("OnReadable was never called")
	}
}

// TestConnHalfClose: the client's FIN after some bytes is announced; TryRead
// returns the bytes, then io.EOF, every time after; and the server can still
// write to the client, which reads it, then the FIN of Close.
func TestConnHalfClose(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	n := newNotifier()
	c.OnReadable(n.fn)
	if _, err := cc.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	n.wait(t, "the bytes before the FIN")
	if err := cc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, c, n, 1<<20)
	if string(got) != "last words" || err != io.EOF {
		t.Fatalf("TryRead to the end: %q, %v; want \"last words\", io.EOF", got, err)
	}
	if !c.Readable() {
		t.Fatal("not Readable after the FIN")
	}
	if k, err := c.TryRead(make([]byte, 8)); k != 0 || err != io.EOF {
		t.Fatalf("TryRead after io.EOF: %d, %v; want io.EOF again", k, err)
	}
	if k, err := c.Write([]byte("reply")); k != 5 || err != nil {
		t.Fatalf("the server's Write after the client's FIN: %d, %v", k, err)
	}
	if got, err := clientRead(t, cc, 5); string(got) != "reply" || err != nil {
		t.Fatalf("the client read %q, %v; want \"reply\"", got, err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got, err := clientRead(t, cc, 1); err != io.EOF {
		t.Fatalf("the client read %q, %v after Close; want io.EOF", got, err)
	}
}

// TestConnClientReset: a RST from the client is announced, and TryRead
// returns it as an error that is neither io.EOF nor ErrWouldBlock.
func TestConnClientReset(t *testing.T) {
	r := newConnRig(t)
	cc, cep, c := r.dialEndpoint()
	n := newNotifier()
	c.OnReadable(n.fn)
	if _, err := cc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	n.wait(t, "a byte")
	if got, err := c.TryRead(make([]byte, 8)); got != 1 || err != nil {
		t.Fatalf("TryRead: %d, %v", got, err)
	}
	cep.Abort()
	n.wait(t, "the client's RST")
	if !c.Readable() {
		t.Fatal("not Readable after the client's RST")
	}
	k, err := c.TryRead(make([]byte, 8))
	if k != 0 || err == nil || err == io.EOF || errors.Is(err, netstack.ErrWouldBlock) || errors.Is(err, net.ErrClosed) {
		t.Fatalf("TryRead after the client's RST: %d, %v; want a reset error", k, err)
	}
	t.Logf("TryRead after the client's RST: %v", err)
	// The endpoint reports its reset once; later reads see the stream ended.
	_, err = c.TryRead(make([]byte, 8))
	t.Logf("TryRead again: %v", err)
	if err == nil || errors.Is(err, netstack.ErrWouldBlock) {
		t.Fatalf("a second TryRead after the RST: %v", err)
	}
}

// TestConnCloseAnnounces: Close and Abort call OnReadable's function
// before they return, TryRead then fails with net.ErrClosed, and the
// client sees a FIN (Close, after what was written) or a RST (Abort).
func TestConnCloseAnnounces(t *testing.T) {
	for _, abort := range []bool{false, true} {
		name := "Close"
		if abort {
			name = "Abort"
		}
		t.Run(name, func(t *testing.T) {
			r := newConnRig(t)
			cc, cep, c := r.dialEndpoint()
			n := newNotifier()
			c.OnReadable(n.fn)
			if _, err := c.Write([]byte("bye")); err != nil {
				t.Fatal(err)
			}
			// Close sends "bye" before its FIN; Abort could drop it, so
			// the client reads it first.
			if abort {
				if got, err := clientRead(t, cc, 3); string(got) != "bye" || err != nil {
					t.Fatalf("the client read %q, %v", got, err)
				}
			}
			// A reader parked on OnReadable wakes, and reads the end.
			woke := make(chan error, 1)
			go func() {
				select {
				case <-n.ch:
					_, err := c.TryRead(make([]byte, 8))
					woke <- err
				case <-time.After(waitFor):
					woke <- errors.New("not woken")
				}
			}()
			before := n.calls.Load()
			if abort {
				c.Abort()
			} else if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			calls := n.calls.Load() - before
			if calls < 1 {
				t.Fatalf("%s did not call OnReadable's function", name)
			}
			t.Logf("%s called OnReadable's function %d times", name, calls)
			if err := <-woke; !errors.Is(err, net.ErrClosed) {
				t.Fatalf("the woken reader's TryRead: %v; want net.ErrClosed", err)
			}
			if !c.Readable() {
				t.Fatalf("not Readable after %s", name)
			}
			if k, err := c.TryRead(make([]byte, 8)); k != 0 || !errors.Is(err, net.ErrClosed) {
				t.Fatalf("TryRead after %s: %d, %v; want net.ErrClosed", name, k, err)
			}
			if abort {
				got, err := clientRead(t, cc, 1)
				if err == nil || err == io.EOF {
					t.Fatalf("the client read %q, %v after Abort; want a reset", got, err)
				}
				t.Logf("the client's Read after Abort: %v", err)
			} else {
				got, err := clientRead(t, cc, 4)
				if string(got) != "bye" || err != io.ErrUnexpectedEOF {
					t.Fatalf("the client read %q, %v after Close; want \"bye\" then EOF", got, err)
				}
			}
			// Client bytes arriving after the end are neither read nor
			// announced, and a second Close or Abort calls nothing more.
			// After Close the server's end answers them with a RST; once
			// the client has it, the server has handled them.
			after := n.calls.Load()
			if !abort {
				if _, err := cc.Write([]byte("late")); err != nil {
					t.Fatalf("the client's write after the server's FIN: %v", err)
				}
				deadline := time.Now().Add(waitFor)
				for st := tcp.EndpointState(cep.State()); st != tcp.StateError && st != tcp.StateClose; st = tcp.EndpointState(cep.State()) {
					if time.Now().After(deadline) {
						t.Fatalf("the client's end is still %s after writing to a closed end", tcp.EndpointState(cep.State()))
					}
					time.Sleep(time.Millisecond)
				}
				t.Logf("the client's end after writing to the closed end: %s", tcp.EndpointState(cep.State()))
			}
			c.Close()
			c.Abort()
			if k, err := c.TryRead(make([]byte, 8)); k != 0 || !errors.Is(err, net.ErrClosed) {
				t.Fatalf("TryRead after %s and the client's write: %d, %v", name, k, err)
			}
			if got := n.calls.Load(); got != after {
				t.Fatalf("OnReadable's function called %d times after %s", got-after, name)
			}
		})
	}
}

// TestConnOnReadableNil: OnReadable(nil) stops the calls, for bytes and for
// Close; a later function gets them again.
func TestConnOnReadableNil(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	buf := make([]byte, 64)
	n := newNotifier()
	c.OnReadable(n.fn)
	cc.Write([]byte("one"))
	n.wait(t, `"one"`)
	if k, err := c.TryRead(buf); string(buf[:k]) != "one" || err != nil {
		t.Fatalf("TryRead: %q, %v", buf[:k], err)
	}
	c.OnReadable(nil)
	stopped := n.calls.Load()
	cc.Write([]byte("two"))
	waitReadable(t, c, `"two" with OnReadable(nil)`)
	if k, err := c.TryRead(buf); string(buf[:k]) != "two" || err != nil {
		t.Fatalf("TryRead: %q, %v", buf[:k], err)
	}
	if got := n.calls.Load(); got != stopped {
		t.Fatalf("OnReadable's function called %d times after OnReadable(nil)", got-stopped)
	}
	// Another function takes over.
	m := newNotifier()
	c.OnReadable(m.fn)
	cc.Write([]byte("three"))
	m.wait(t, `"three"`)
	if k, err := c.TryRead(buf); string(buf[:k]) != "three" || err != nil {
		t.Fatalf("TryRead: %q, %v", buf[:k], err)
	}
	// Stopped again, Close calls nothing either.
	c.OnReadable(nil)
	mStopped := m.calls.Load()
	c.Close()
	if m.calls.Load() != mStopped || n.calls.Load() != stopped {
		t.Fatal("Close called a function after OnReadable(nil)")
	}
}

// TestConnOnReadWait: OnReadWait's function runs when a Read finds nothing
// to read and is about to wait for the client, not when bytes are there
// already; StopReadWait of another function leaves it, of its own stops it.
func TestConnOnReadWait(t *testing.T) {
	r := newConnRig(t)
	cc, c := r.dial()
	var waits atomic.Int32
	count := func() { waits.Add(1) }
	if !c.OnReadWait(&count) {
		t.Fatal("OnReadWait not supported")
	}
	if _, err := cc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(waitFor); !c.Readable(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client's bytes never became readable")
		}
	}
	buf := make([]byte, 64)
	if k, err := c.Read(buf); err != nil || string(buf[:k]) != "hello" {
		t.Fatalf("Read: %q, %v", buf[:k], err)
	}
	if n := waits.Load(); n != 0 {
		t.Fatalf("called %d times for a Read that found bytes", n)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		cc.Write([]byte("again"))
	}()
	c.SetReadDeadline(time.Now().Add(waitFor))
	if k, err := c.Read(buf); err != nil || string(buf[:k]) != "again" {
		t.Fatalf("Read: %q, %v", buf[:k], err)
	}
	if n := waits.Load(); n != 1 {
		t.Fatalf("called %d times for a Read that waited, want 1", n)
	}
	other := func() {}
	c.StopReadWait(&other) // not the one set: nothing stops
	c.StopReadWait(&count)
	go func() {
		time.Sleep(20 * time.Millisecond)
		cc.Write([]byte("third"))
	}()
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if n := waits.Load(); n != 1 {
		t.Fatalf("called after StopReadWait: %d", n)
	}
}
