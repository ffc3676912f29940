package hostconn

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shortIdle makes WaitRead give up after d for the test.
func shortIdle(t *testing.T, d time.Duration) {
	t.Cleanup(SetIdleAfter(d))
}

// idleReader reads c as the relay does: WaitRead until there are bytes,
// parking on ErrIdle and waiting for the wake. It returns the bytes, and
// how many times it parked.
type idleReader struct {
	c     *Conn
	buf   []byte
	n     int
	woken chan struct{}
}

func newIdleReader(c *Conn) *idleReader {
	return &idleReader{c: c, buf: make([]byte, 64), woken: make(chan struct{}, 1)}
}

func (r *idleReader) read(fd uintptr) bool {
	n, e := ReadFD(fd, r.buf)
	if e == syscall.EAGAIN {
		return false
	}
	r.n = n
	return true
}

func (r *idleReader) wake() { r.woken <- struct{}{} }

// next waits for the reader's next bytes (up to timeout), parking as
// often as WaitRead gives up; n is 0 at the end of the stream.
func (r *idleReader) next(t *testing.T, timeout time.Duration) (n, parks int, err error) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		err := r.c.WaitRead(r.read)
		if !errors.Is(err, ErrIdle) {
			return r.n, parks, err
		}
		if !r.c.ParkRead(r.wake) {
			continue
		}
		parks++
		select {
		case <-r.woken:
		case <-deadline:
			return 0, parks, errors.New("not woken")
		}
	}
}

func dialedPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	d := &Dialer{}
	t.Cleanup(d.Close)
	c, peer := dialAccept(t, d, loopback(t))
	t.Cleanup(func() { c.Close() })
	return c, peer
}

// A quiet read gives its wait up after IdleAfter and parks without a
// goroutine; the next bytes wake it, and they are read whole.
func TestQuietReadParksAndWakes(t *testing.T) {
	shortIdle(t, 100*time.Millisecond)
	c, peer := dialedPair(t)
	r := newIdleReader(c)
	start := time.Now()
	if err := c.WaitRead(r.read); !errors.Is(err, ErrIdle) {
		t.Fatalf("WaitRead on a quiet connection: %v, want ErrIdle", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("WaitRead gave up after %v, want IdleAfter (100ms) to about twice that", d)
	}
	before := runtime.NumGoroutine()
	if !c.ParkRead(r.wake) {
		t.Fatal("ParkRead refused an open connection")
	}
	select {
	case <-r.woken:
		t.Fatal("woken with nothing to read")
	case <-time.After(300 * time.Millisecond):
	}
	if after := runtime.NumGoroutine(); after > before+1 { // the watch's own, once
		t.Errorf("goroutines %d before the park, %d while parked", before, after)
	}
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.woken:
	case <-time.After(5 * time.Second):
		t.Fatal("the peer's bytes did not wake the parked read")
	}
	n, _, err := r.next(t, 5*time.Second)
	if err != nil || string(r.buf[:n]) != "ping" {
		t.Fatalf("read %q, %v after the wake, want ping", r.buf[:n], err)
	}
	// Parked again: the peer's FIN wakes it too, and reads as the end.
	peer.(*net.TCPConn).CloseWrite()
	if n, parks, err := r.next(t, 5*time.Second); err != nil || n != 0 {
		t.Fatalf("after the peer's FIN: %d bytes, %v (parks %d), want the end", n, err, parks)
	}
}

// A parked read is woken, once, when its connection is closed or aborted
// under it: closing a descriptor takes it out of an epoll set without an
// event, and a relay direction parked forever would never end.
func TestParkedReadWokenByCloseAndAbort(t *testing.T) {
	shortIdle(t, 50*time.Millisecond)
	for _, how := range []string{"Close", "Abort", "Close of a wrapped conn", "peer's reset"} {
		t.Run(how, func(t *testing.T) {
			var c *Conn
			var peer net.Conn
			if how == "Close of a wrapped conn" {
				ln := loopback(t)
				tc, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				if peer, err = ln.Accept(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { peer.Close() })
				c = Wrap(tc).(*Conn)
			} else {
				c, peer = dialedPair(t)
			}
			r := newIdleReader(c)
			if err := c.WaitRead(r.read); !errors.Is(err, ErrIdle) {
				t.Fatalf("WaitRead: %v, want ErrIdle", err)
			}
			if !c.ParkRead(r.wake) {
				t.Fatal("ParkRead refused")
			}
			switch how {
			case "Abort":
				c.Abort()
			case "peer's reset":
				peer.(*net.TCPConn).SetLinger(0)
				peer.Close()
			default:
				c.Close()
			}
			select {
			case <-r.woken:
			case <-time.After(5 * time.Second):
				t.Fatalf("%s did not wake the parked read", how)
			}
			select {
			case <-r.woken:
				t.Fatal("woken twice")
			case <-time.After(100 * time.Millisecond):
			}
			r.n = 0
			if err := c.WaitRead(r.read); err == nil && r.n > 0 {
				t.Errorf("read %d bytes after %s", r.n, how)
			}
			if how != "peer's reset" && c.ParkRead(r.wake) {
				t.Errorf("ParkRead after %s parked", how)
			}
		})
	}
}

// Bytes that keep coming at about IdleAfter apart race the sweep's
// deadline against the reads: none may be lost or read twice, and a wait
// that was given up must not leave its deadline behind.
func TestIdleKicksRaceTheBytes(t *testing.T) {
	shortIdle(t, 2*time.Millisecond)
	c, peer := dialedPair(t)
	r := newIdleReader(c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	const rounds = 400
	last := make(chan struct{})
	go func() {
		for i := range rounds {
			if ctx.Err() != nil {
				return
			}
			peer.Write([]byte{byte(i)})
			time.Sleep(time.Duration(500+i%7*400) * time.Microsecond)
		}
		select {
		case <-last:
		case <-ctx.Done():
			return
		}
		time.Sleep(50 * time.Millisecond)
		peer.Write([]byte{0xff})
	}()
	var got []byte
	parks := 0
	for len(got) < rounds {
		n, p, err := r.next(t, 5*time.Second)
		parks += p
		if err != nil || n == 0 {
			t.Fatalf("after %d bytes: %d, %v", len(got), n, err)
		}
		got = append(got, r.buf[:n]...)
	}
	if len(got) != rounds {
		t.Fatalf("read %d bytes, want %d", len(got), rounds)
	}
	for i, b := range got {
		if b != byte(i) {
			t.Fatalf("byte %d is %d: lost or repeated", i, b)
		}
	}
	t.Logf("%d bytes, %d parks", len(got), parks)
	if parks == 0 {
		t.Error("no read was ever given up: the race was not run")
	}
	// No deadline left behind: a plain Read waits for its byte.
	close(last)
	b := make([]byte, 1)
	if n, err := c.Read(b); n != 1 || b[0] != 0xff {
		t.Errorf("a Read after the parks: %d, %v, want the last byte", n, err)
	}
}

// A watch that could not be made (no descriptor free at the first park) is
// tried again later, not given up for the process's life: parking off for
// good would cost every quiet flow its goroutine and a kick every 2 s.
func TestWatchMadeAgainAfterAFailure(t *testing.T) {
	calls := 0
	m := &watchMaker{retry: 50 * time.Millisecond, create: func(flags int) (int, error) {
		calls++
		if calls == 1 {
			return -1, syscall.EMFILE
		}
		return unix.EpollCreate1(flags)
	}}
	if _, err := m.get(); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("first get: %v, want EMFILE", err)
	}
	if _, err := m.get(); err == nil || calls != 1 {
		t.Fatalf("a get right after the failure: %v after %d tries, want the failure kept for the retry's wait", err, calls)
	}
	time.Sleep(60 * time.Millisecond)
	w, err := m.get()
	if err != nil || w == nil {
		t.Fatalf("a get after the retry's wait: %v", err)
	}
	t.Cleanup(func() { unix.Close(w.epfd) })
	if again, _ := m.get(); again != w || calls != 2 {
		t.Errorf("the watch was made again (%d tries)", calls)
	}
}

// Many connections park and wake over and over, bytes racing the sweep's
// kicks, then end by Close, Abort, the peer's reset or its FIN: every
// reader gets its bytes in order and ends, and the watch and the sweep
// forget every connection (their maps only shrink when a Conn is gone).
func TestParkChurnLeavesNothing(t *testing.T) {
	t.Cleanup(SetIdleAfter(1 * time.Millisecond))
	ln := loopback(t)
	d := &Dialer{}
	defer d.Close()
	const N = 60
	var wg sync.WaitGroup
	errs := make(chan error, N)
	mine := make(map[*Conn]bool, N)
	for i := range N {
		ap := netip.MustParseAddrPort(ln.Addr().String())
		cc, err := d.DialContext(context.Background(), ap)
		if err != nil {
			t.Fatal(err)
		}
		c := cc.(*Conn)
		mine[c] = true
		peer, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			woken := make(chan struct{}, 4)
			buf := make([]byte, 64)
			var n int
			fn := func(fd uintptr) bool {
				m, e := ReadFD(fd, buf)
				if e == syscall.EAGAIN {
					return false
				}
				n = m
				if e != 0 {
					n = -1
				}
				return true
			}
			go func() {
				for j := range 50 {
					peer.Write([]byte{byte(j)})
					time.Sleep(time.Duration(rand.IntN(2500)) * time.Microsecond)
				}
				switch i % 4 {
				case 0:
					c.Close()
				case 1:
					c.Abort()
				case 2:
					peer.(*net.TCPConn).SetLinger(0)
					peer.Close()
				case 3:
					peer.Close()
				}
			}()
			want := 0
			for {
				err := c.WaitRead(fn)
				if errors.Is(err, ErrIdle) {
					if c.ParkRead(func() { woken <- struct{}{} }) {
						select {
						case <-woken:
						case <-time.After(5 * time.Second):
							errs <- errors.New("not woken")
							return
						}
					}
					continue
				}
				if err != nil || n <= 0 {
					break
				}
				for _, b := range buf[:n] {
					if int(b) != want {
						errs <- errors.New("out of order")
						return
					}
					want++
				}
			}
			if want != 50 && i%4 == 3 {
				errs <- errors.New("lost bytes")
			}
			c.Close()
			peer.Close()
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	// The maps are the process's: other tests' conns may be in them. The
	// sweep forgets a closed conn at its next pass, which may be a second
	// away if it slept under the default IdleAfter.
	held := func() (watched, swept int) {
		if w := watches.made.Load(); w != nil {
			w.mu.Lock()
			for _, c := range w.conns {
				if mine[c] {
					watched++
				}
			}
			w.mu.Unlock()
		}
		sweep.mu.Lock()
		for c := range sweep.conns {
			if mine[c] {
				swept++
			}
		}
		sweep.mu.Unlock()
		return watched, swept
	}
	watched, swept := held()
	for end := time.Now().Add(5 * time.Second); (watched != 0 || swept != 0) && time.Now().Before(end); watched, swept = held() {
		time.Sleep(20 * time.Millisecond)
	}
	if watched != 0 || swept != 0 {
		t.Errorf("of %d closed conns the watch still holds %d and the sweep %d", N, watched, swept)
	}
}

// TestLongParkStillWakes: a read parked for longer than the watch's empty
// epoll wait (1 s) is still woken by the peer's bytes, because the watch
// runs while any connection is parked. Otherwise a relayed flow whose
// destination is quiet for a few seconds (an SSH session, a long poll)
// would never see what the destination sends later.
func TestLongParkStillWakes(t *testing.T) {
	shortIdle(t, 50*time.Millisecond)
	c, peer := dialedPair(t)
	r := newIdleReader(c)
	if err := c.WaitRead(r.read); !errors.Is(err, ErrIdle) {
		t.Fatalf("WaitRead on a quiet connection: %v, want ErrIdle", err)
	}
	if !c.ParkRead(r.wake) {
		t.Fatal("ParkRead refused an open connection")
	}
	// The quiet itself is what is tested: it must outlast two of the
	// watch's empty waits, so no event can stand in for it.
	select {
	case <-r.woken:
		t.Fatal("woken with nothing to read")
	case <-time.After(2500 * time.Millisecond):
	}
	if _, err := peer.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.woken:
	case <-time.After(3 * time.Second):
		t.Fatal("bytes that came 2.5 s into a park never woke the parked read")
	}
}
