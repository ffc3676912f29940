package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strings"
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

// namesOnly is a lock-down to an allow-list of names: default deny, and
// only allowed.example let through.
const namesOnly = "policy:\n  default: deny\n  rules:\n    - name: web\n      domains: [allowed.example]\n      action: allow\n"

// TestWaitingDialledFirstNamedOnlyAfterReload: a connection dialled first
// whose client is silent, when a reload makes its destination one only a
// name could let through (an allow-list of names, whose domain rules keep
// the addresses from being denied outright), is served as a new connection
// would be under that policy: its destination's connection closed at the
// reload, its slot in its client's waiting share kept, and a name awaited
// for nameWait with nothing dialled. A client silent through it is refused
// (never classified as tcp); one whose ClientHello names an allowed name
// has its destination dialled again and is spliced; a denied name is
// refused. Before, the sweep did not wake it (DecideEarly denies nothing
// here), and the destination's connection stayed open for as long as the
// client stayed silent (review r7s29 F2).
func TestWaitingDialledFirstNamedOnlyAfterReload(t *testing.T) {
	defer func(w time.Duration) { nameWait = w }(nameWait)
	nameWait = time.Second

	t.Run("silent", func(t *testing.T) {
		r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
		dest, accepted, closed := silentServer(t)
		c := r.dial(t, dest)
		defer c.Close()
		receive(t, accepted, "the destination's connection")
		waitListed(t, r.p, 1)

		r.reloadPolicy(t, namesOnly)
		receive(t, closed, "the destination's connection closed after a reload under which only a name could open it")
		if n := waitingSlotsHeld(r.p); n != 1 {
			t.Errorf("%d waiting slots held while the connection waits for a name, want 1", n)
		}
		waitListed(t, r.p, 0)
		c.SetReadDeadline(time.Now().Add(nameWait + 3*time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || !isReset(err) {
			t.Errorf("the silent client's read: %v, want a reset once nameWait ended", err)
		}
		rec := r.record(t, c, "tcp")
		if rec.Action != "deny" || rec.Rule != policy.DefaultRule || rec.Policy != r.p.cfg.Policy.Load().ID() ||
			rec.Result != "denied" || !strings.Contains(rec.Error, "so the reload closed its connection there") ||
			rec.BytesOut != 0 || rec.BytesIn != 0 {
			t.Errorf("record %+v; want tcp denied by default of the new policy, the silent client named", rec)
		}
		select {
		case <-accepted:
			t.Errorf("the destination was dialled again for a client that sent no name")
		default:
		}
		waitNoWaitingSlots(t, r.p, "after the refusal")
	})

	for _, tc := range []struct{ name, action, rule string }{
		{"allowed.example", "splice", "web"},
		{"denied.example", "deny", policy.DefaultRule},
	} {
		t.Run("hello for "+tc.name, func(t *testing.T) {
			r := newClsRig(t, "policy: {default: allow}\n", clsOptions{})
			c := r.dial(t, r.tlsDest)
			defer c.Close()
			waitListed(t, r.p, 1)

			r.reloadPolicy(t, namesOnly)
			waitListed(t, r.p, 0) // waiting for a name now, with nothing dialled
			err := tls.Client(c, &tls.Config{ServerName: tc.name, RootCAs: r.upRoots}).Handshake()
			if (err == nil) != (tc.action == "splice") {
				t.Errorf("handshake for %s: %v", tc.name, err)
			}
			c.Close()
			onlyRecord(t, r, c, "tls")
			if rec := r.record(t, c, "tls"); rec.Action != tc.action || rec.Rule != tc.rule || rec.SNI != tc.name {
				t.Errorf("record %+v, want tls %s by rule %s", rec, tc.action, tc.rule)
			}
			waitNoWaitingSlots(t, r.p, "after the handshake")
		})
	}
}
