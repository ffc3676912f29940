package proxy

import (
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// echoOnce writes b on c and waits, 3 s at most, for it to come back.
func echoOnce(t *testing.T, c net.Conn, b string, what string) {
	t.Helper()
	if _, err := c.Write([]byte(b)); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	got := make([]byte, len(b))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != b {
		t.Fatalf("%s: read %q, %v; want %q echoed", what, got, err, b)
	}
}

// TestWaitingSweepDecidesWithoutTheLock: a reload's look at the waiting
// connections decides each without the list's lock, so while the
// decisions run (long for a policy of many rules and many waiting
// connections), a waiting connection whose first bytes come and a new
// connection are both served. Before, the look held the lock through
// every decision: both waited for all of them (review r7s29 F1). The wake
// the look then makes for the connection that has since been relayed does
// it no harm.
func TestWaitingSweepDecidesWithoutTheLock(t *testing.T) {
	r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
	echo := rawEchoServer(t)
	c := r.dial(t, echo)
	defer c.Close()
	waitListed(t, r.p, 1)

	ws := &r.p.tcp.waiters
	entered, release, done := make(chan struct{}, 8), make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	go func() {
		defer close(done)
		ws.wakeWhere(func(policy.Subject) bool {
			calls.Add(1)
			entered <- struct{}{}
			<-release // a decision that takes as long as the test likes
			return true
		})
	}()
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	receive(t, entered, "the look's decision")

	echoOnce(t, c, "\x00waited", "the waiting connection's first bytes during the look")
	d := r.dial(t, echo)
	defer d.Close()
	echoOnce(t, d, "\x00new", "a new connection during the look")

	close(release)
	released = true
	receive(t, done, "the look's end")
	if n := calls.Load(); n != 1 {
		t.Errorf("%d decisions, want 1: one connection was listed when the look began", n)
	}
	echoOnce(t, c, "\x00after", "the relayed connection after the look woke it")
	echoOnce(t, d, "\x00after", "the new connection after the look")
}

// TestWaitingSweepDecidesEachSubjectOnce: the look decides each distinct
// subject once, however many connections share it, and wakes just the
// connections whose subject it denies.
func TestWaitingSweepDecidesEachSubjectOnce(t *testing.T) {
	var ws tcpWaiters
	db := policy.Subject{Dest: netip.MustParseAddrPort("192.0.2.1:5432"), Client: netip.MustParseAddr("198.51.100.1")}
	web := policy.Subject{Dest: netip.MustParseAddrPort("192.0.2.2:443"), Client: netip.MustParseAddr("198.51.100.1")}
	var watches []*serverFirstWatch
	for i := range 6 {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		w := &serverFirstWatch{client: a, sniffing: true}
		subj := &db
		if i%2 == 1 {
			subj = &web
		}
		ws.add(w, subj)
		watches = append(watches, w)
	}
	decided := map[policy.Subject]int{}
	ws.wakeWhere(func(s policy.Subject) bool {
		decided[s]++
		return s == db
	})
	if len(decided) != 2 || decided[db] != 1 || decided[web] != 1 {
		t.Errorf("decisions per subject %v, want one each for the two", decided)
	}
	for i, w := range watches {
		if woke := w.takeWake(); woke != (i%2 == 0) {
			t.Errorf("watch %d woken %v, want %v", i, woke, i%2 == 0)
		}
		ws.remove(w)
	}
	if ws.head != nil || ws.n != 0 {
		t.Errorf("the list holds %d once every connection left it", ws.n)
	}
}
