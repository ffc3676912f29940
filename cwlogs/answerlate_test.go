package cwlogs

import (
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
)

// TestCloseResendsACallStoredButUnanswered: on SIGTERM a PutLogEvents
// hangs after the service has stored it, its answer lost (a half-dead
// connection; the real service processes a request it has read whole,
// whether or not its client still waits). Close gives the call up and
// sends the batch again, and the service stores it twice: delivery is at
// least once, never at most once (records.md). What the test holds the
// shipper to: nothing lost, only that one batch doubled, each record
// counted shipped once. TestCloseCutsAHungCall's fake stores nothing for
// a call its client gave up, a kinder service than the real one, and
// could not see the duplicates (review r1cwlogs F2).
func TestCloseResendsACallStoredButUnanswered(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	s.Write(line(0, 0, 50))
	waitFor(t, 5*time.Second, "the first line", func() bool { return srv.EventCount(cfg.Group, cfg.Stream) == 1 })
	calls := srv.Calls("PutLogEvents")
	srv.SetAnswerDelay(time.Hour)
	const n = 101
	for i := 1; i < n; i++ {
		s.Write(line(0, i, 50))
	}
	waitFor(t, 5*time.Second, "the hung call", func() bool { return srv.Calls("PutLogEvents") == calls+1 })
	srv.SetAnswerDelay(0)
	closeShipper(t, s, 2*time.Second)

	copies := make([]int, n)
	for idx, e := range srv.Events(cfg.Group, cfg.Stream) {
		_, i, ok := parseLine(e.Message)
		if !ok || i < 0 || i >= n {
			t.Fatalf("event %d: unexpected message %.40q", idx, e.Message)
		}
		copies[i]++
	}
	first, last := -1, -1 // the doubled run
	for i, c := range copies {
		switch {
		case c == 0:
			t.Errorf("line %d lost", i)
		case c > 2:
			t.Errorf("line %d stored %d times", i, c)
		case c == 2 && first < 0:
			first, last = i, i
		case c == 2 && last == i-1:
			last = i
		case c == 2:
			t.Errorf("line %d doubled apart from the run %d-%d: more than the one batch sent again", i, first, last)
		}
	}
	t.Logf("lines %d-%d stored twice (the batch whose answer was lost)", first, last)
	if first < 0 {
		t.Error("no line stored twice: the service stored the hung call, and the batch was sent again")
	}
	st := s.Stats()
	if st.Shipped != n || st.Dropped != 0 {
		t.Errorf("shipped %d, dropped %d; want %d shipped, each record once", st.Shipped, st.Dropped, n)
	}
	checkInvariant(t, st)
}
