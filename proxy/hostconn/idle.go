package hostconn

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Most relayed connections are quiet most of their life, and a read
// waiting in the runtime's poller holds a goroutine: its stack was a third
// of an idle relayed flow's memory. A read that has waited for IdleAfter() is
// given up (WaitRead returns ErrIdle), and the caller can park the
// connection in a watch of its own (ParkRead): one epoll instance and one
// goroutine for all parked connections, which calls the caller back when
// the connection has something to read, has ended, or is closed.
//
// The hand-over costs a deadline, an epoll_ctl and, at the next bytes, a
// wake-up of the watch's thread: nothing for a connection that is busy,
// and little for one that has been quiet for seconds. A busy connection
// pays a mutex and a clock reading per wait.

// DefaultIdleAfter is how long WaitRead waits before it gives up with
// ErrIdle.
const DefaultIdleAfter = 2 * time.Second

var idleAfter atomic.Int64

func init() { idleAfter.Store(int64(DefaultIdleAfter)) }

// SetIdleAfter changes how long WaitRead waits, for tests; it returns
// what undoes it.
func SetIdleAfter(d time.Duration) (restore func()) {
	old := idleAfter.Swap(int64(d))
	return func() { idleAfter.Store(old) }
}

// IdleAfter returns how long WaitRead waits before it gives up.
func IdleAfter() time.Duration { return time.Duration(idleAfter.Load()) }

// ErrIdle is WaitRead's when the connection had nothing to read for
// IdleAfter().
var ErrIdle = errors.New("hostconn: idle")

// idleRead is a Conn's state for WaitRead and ParkRead.
type idleRead struct {
	mu     sync.Mutex
	since  time.Duration // when WaitRead began to wait (sinceStart); 0: not waiting
	kicked bool          // the sweep set a deadline to end the wait
	swept  bool          // in the sweep's set

	parked atomic.Bool   // ParkRead's; whoever clears it calls wake
	wake   func()        // set once, before the first park
	token  atomic.Uint64 // the epoll registration's, once armed; 0: never
}

// pastDeadline is the deadline that ends a wait at once.
var pastDeadline = time.Unix(1, 0)

var clockStart = time.Now()

func sinceStart() time.Duration { return time.Since(clockStart) + 1 }

// WaitRead reads through the raw connection as RawConn.Read does with fn,
// but gives the wait up with ErrIdle once the connection has had nothing
// to read for IdleAfter(). The connection's read deadline is its own while
// WaitRead runs; nobody else may set one.
func (c *Conn) WaitRead(fn func(fd uintptr) bool) error {
	c.idle.mu.Lock()
	c.idle.since = sinceStart()
	if !c.idle.swept {
		c.idle.swept = true
		sweep.add(c)
	}
	c.idle.mu.Unlock()

	err := c.rc.Read(fn)

	c.idle.mu.Lock()
	c.idle.since = 0
	kicked := c.idle.kicked
	if kicked {
		c.idle.kicked = false
		_ = c.TCPConn.SetReadDeadline(time.Time{})
	}
	c.idle.mu.Unlock()
	if kicked && errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrIdle
	}
	return err
}

// ParkRead arranges for wake to be called once, from another goroutine,
// when c has something to read, has ended or failed, or is closed; wake
// must not block. It returns false when it could not (c is closed, or the
// kernel refused): the caller reads again. After true the caller must not
// touch what wake hands on: wake may already be running. Every park of a
// Conn must pass the same wake.
func (c *Conn) ParkRead(wake func()) bool {
	if c.idle.wake == nil {
		c.idle.wake = wake
	}
	w, err := parkWatch()
	if err != nil {
		return false
	}
	c.idle.parked.Store(true)
	if c.gone.Load() {
		return !c.idle.parked.CompareAndSwap(true, false)
	}
	var e error
	cerr := c.rc.Control(func(fd uintptr) { e = w.arm(c, int(fd)) })
	if cerr != nil || e != nil {
		// A Close meanwhile has woken the caller already, or will.
		return !c.idle.parked.CompareAndSwap(true, false)
	}
	return true
}

// unpark wakes a parked read, when c is closed or aborted: closing the
// descriptor takes it out of the epoll set without an event.
func (c *Conn) unpark() {
	c.gone.Store(true)
	if tok := c.idle.token.Load(); tok != 0 { // once parked: most conns never are
		w := watches.made.Load()
		w.mu.Lock()
		delete(w.conns, tok)
		w.mu.Unlock()
	}
	if c.idle.parked.CompareAndSwap(true, false) {
		c.idle.wake()
	}
}

// watch is the epoll instance of parked connections and its goroutine.
type watch struct {
	epfd int

	mu      sync.Mutex
	conns   map[uint64]*Conn // by token, from the first park until unpark
	next    uint64
	running bool
}

// watches makes the process's watch at its first park. A failure (no
// descriptor or memory free) is tried again at a park a second later, not
// kept: parking off for good would cost every quiet flow its goroutine.
var watches = watchMaker{create: unix.EpollCreate1, retry: time.Second}

// watchMaker makes a watch once, trying again after a failure.
type watchMaker struct {
	made atomic.Pointer[watch]

	mu       sync.Mutex
	create   func(flags int) (int, error)
	retry    time.Duration
	failedAt time.Time
	err      error
}

// get returns the watch, made now if need be.
func (m *watchMaker) get() (*watch, error) {
	if w := m.made.Load(); w != nil {
		return w, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.made.Load(); w != nil {
		return w, nil
	}
	if m.err != nil && time.Since(m.failedAt) < m.retry {
		return nil, m.err
	}
	fd, err := m.create(unix.EPOLL_CLOEXEC)
	if err != nil {
		m.failedAt, m.err = time.Now(), os.NewSyscallError("epoll_create1", err)
		return nil, m.err
	}
	w := &watch{epfd: fd, conns: make(map[uint64]*Conn)}
	m.made.Store(w)
	return w, nil
}

func parkWatch() (*watch, error) { return watches.get() }

// arm adds fd to the epoll set for one event, level-triggered: bytes that
// came before it count.
func (w *watch) arm(c *Conn, fd int) error {
	w.mu.Lock()
	tok := c.idle.token.Load()
	first := tok == 0
	if first {
		w.next++
		tok = w.next
		c.idle.token.Store(tok)
		w.conns[tok] = c
	}
	// Looked at after the token is out: unpark either sees the token and
	// forgets it, or is seen here (a Dialer's descriptor outlives Close).
	if c.gone.Load() {
		delete(w.conns, tok)
		w.mu.Unlock()
		return net.ErrClosed
	}
	if !w.running {
		w.running = true
		go w.run()
	}
	w.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	ev.Fd, ev.Pad = int32(uint32(tok)), int32(uint32(tok>>32))
	op := unix.EPOLL_CTL_MOD
	if first {
		op = unix.EPOLL_CTL_ADD
	}
	if err := unix.EpollCtl(w.epfd, op, fd, &ev); err != nil {
		if first { // not in the set: the next park adds it again
			w.mu.Lock()
			delete(w.conns, tok)
			c.idle.token.Store(0)
			w.mu.Unlock()
		}
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// run waits for events until no connection has been parked for a while.
func (w *watch) run() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(w.epfd, events, 1000)
		if err != nil {
			if err != syscall.EINTR {
				time.Sleep(10 * time.Millisecond) // never spin on an error that stays
			}
			n = 0
		}
		w.mu.Lock()
		for i := range n {
			tok := uint64(uint32(events[i].Fd)) | uint64(uint32(events[i].Pad))<<32
			c := w.conns[tok]
			if c == nil {
				continue
			}
			if c.idle.parked.CompareAndSwap(true, false) {
				w.mu.Unlock()
				c.idle.wake()
				w.mu.Lock()
			}
		}
		if n == 0 && len(w.conns) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}

// sweeper ends the waits of WaitRead that have lasted IdleAfter.
type sweeper struct {
	mu      sync.Mutex
	conns   map[*Conn]struct{}
	running bool
	batch   []*Conn
}

var sweep = sweeper{conns: make(map[*Conn]struct{})}

func (s *sweeper) add(c *Conn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	if !s.running {
		s.running = true
		go s.run()
	}
	s.mu.Unlock()
}

func (s *sweeper) run() {
	for {
		time.Sleep(IdleAfter() / 2)
		s.mu.Lock()
		s.batch = s.batch[:0]
		for c := range s.conns {
			if c.gone.Load() {
				delete(s.conns, c)
				continue
			}
			s.batch = append(s.batch, c)
		}
		if len(s.conns) == 0 {
			s.running = false
			s.batch = s.batch[:0]
			s.mu.Unlock()
			return
		}
		batch := s.batch
		s.mu.Unlock()

		now, idle := sinceStart(), IdleAfter()
		for _, c := range batch {
			c.idle.mu.Lock()
			if c.idle.since != 0 && !c.idle.kicked && now-c.idle.since >= idle {
				c.idle.kicked = true
				_ = c.TCPConn.SetReadDeadline(pastDeadline)
			}
			c.idle.mu.Unlock()
		}
		clear(batch)
	}
}
