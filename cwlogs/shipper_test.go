package cwlogs

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

func TestDeliversInOrderAndCreatesGroup(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.RetentionDays = 7
	s := startShipper(t, srv, cfg)
	const n = 5000
	for i := range n {
		if k, err := s.Write(line(0, i, 120)); err != nil || k != 121 {
			t.Fatalf("Write = %d, %v", k, err)
		}
	}
	closeShipper(t, s, 10*time.Second)

	exists, retention := srv.Group(cfg.Group)
	if !exists || retention != 7 {
		t.Fatalf("group exists=%v retention=%d, want a created group with 7 days", exists, retention)
	}
	events := srv.Events(cfg.Group, cfg.Stream)
	checkExactlyOnce(t, events, n)
	if strings.HasSuffix(events[0].Message, "\n") {
		t.Errorf("trailing newline kept: %q", events[0].Message)
	}
	st := s.Stats()
	if st.Shipped != n || st.Received != n || st.Dropped != 0 || st.QueuedRecords != 0 || st.QueuedBytes != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariant(t, st)
}

func TestExistingGroupKeepsItsRetention(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.RetentionDays = 7
	srv.CreateGroup(cfg.Group, 0)
	s := startShipper(t, srv, cfg)
	s.Write(line(0, 0, 10))
	closeShipper(t, s, 5*time.Second)
	if _, retention := srv.Group(cfg.Group); retention != 0 {
		t.Fatalf("retention of an existing group changed to %d", retention)
	}
	if srv.Calls("PutRetentionPolicy") != 0 {
		t.Fatalf("PutRetentionPolicy called on an existing group")
	}
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 1)
}

func TestRetriesThrottlingAndServerErrors(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	// Faults on set-up calls too: the shipper must create group and stream
	// through them.
	srv.Throttle(2, "CreateLogGroup")
	srv.Fail(2, 500, "CreateLogStream")
	srv.Throttle(6, "PutLogEvents")
	srv.Fail(4, 500, "PutLogEvents")
	srv.Fail(3, 503, "PutLogEvents")
	srv.FailWithCode(2, 502, "BadGateway", "PutLogEvents")
	s := startShipper(t, srv, cfg)
	const n = 20000
	for i := range n {
		s.Write(line(0, i, 60))
		if i%2000 == 0 {
			time.Sleep(5 * time.Millisecond) // spread over several batches
		}
	}
	closeShipper(t, s, 20*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), n)
	st := s.Stats()
	if srv.FaultsServed() != 19 {
		t.Fatalf("faults served = %d, want 19", srv.FaultsServed())
	}
	if st.Retried != 19 {
		t.Errorf("retried = %d, want one per injected fault (19)", st.Retried)
	}
	if st.LastError == "" || st.LastErrorTime.IsZero() {
		t.Errorf("last error not recorded: %+v", st)
	}
	if st.Shipped != n || st.Failed != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariant(t, st)
}

func TestSlowResponses(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.SetLatency(150 * time.Millisecond)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	const n = 30000
	for i := range n {
		s.Write(line(0, i, 60))
	}
	closeShipper(t, s, 30*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), n)
	if st := s.Stats(); st.Retried != 0 {
		t.Errorf("retried %d times though every call succeeded slowly", st.Retried)
	}
}

// TestWriteNeverWaitsForTheNetwork: with every call hanging, writes still
// return at once.
func TestWriteNeverWaitsForTheNetwork(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	srv.CreateStream(testConfig().Group, testConfig().Stream)
	srv.SetLatency(time.Hour)
	s := startShipper(t, srv, testConfig())
	const n = 3 * MaxBatchEvents
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			s.Write(line(0, i, 60))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("writes blocked behind a hanging endpoint")
	}
	// The worker is stuck in its first call, creating the group.
	waitFor(t, 5*time.Second, "the first call to hang", func() bool { return srv.Calls("CreateLogGroup") == 1 })
	if st := s.Stats(); st.QueuedRecords != n || st.Shipped != 0 {
		t.Fatalf("stats %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Close(ctx); err == nil {
		t.Fatal("Close reported success with everything unshipped")
	}
	if st := s.Stats(); st.Dropped != n {
		t.Fatalf("dropped %d, want %d", st.Dropped, n)
	}
}

func TestConcurrentProducersKeepTheirOrder(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	srv.Throttle(3, "PutLogEvents")
	s := startShipper(t, srv, cfg)
	const producers, each = 6, 2000
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				s.Write(line(p, i, 80))
			}
		})
	}
	wg.Wait()
	closeShipper(t, s, 20*time.Second)
	next := make([]int, producers)
	events := srv.Events(cfg.Group, cfg.Stream)
	for _, e := range events {
		p, i, ok := parseLine(e.Message)
		if !ok || p >= producers {
			t.Fatalf("unexpected message %.40q", e.Message)
		}
		if i != next[p] {
			t.Fatalf("producer %d: got line %d, want %d", p, i, next[p])
		}
		next[p]++
	}
	for p, c := range next {
		if c != each {
			t.Errorf("producer %d: %d lines delivered, want %d", p, c, each)
		}
	}
}

// TestShortOutage: the endpoint refuses connections for a second while lines
// keep coming; everything arrives once, in order, and the backoff keeps the
// retry rate bounded.
func TestShortOutage(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	next := 0
	write := func(k int) {
		for range k {
			s.Write(line(0, next, 100))
			next++
		}
	}
	write(1000)
	waitFor(t, 5*time.Second, "first lines delivered", func() bool { return srv.EventCount(cfg.Group, cfg.Stream) == 1000 })

	const outage = time.Second
	srv.Outage(outage, cwlogstest.OutageRefuse)
	before := s.Stats().Retried
	for range 30 {
		write(100)
		time.Sleep(20 * time.Millisecond)
	}
	if srv.InOutage() {
		if got := srv.EventCount(cfg.Group, cfg.Stream); got != 1000 {
			t.Fatalf("%d events stored during the outage", got)
		}
		if st := s.Stats(); st.QueuedRecords == 0 {
			t.Fatalf("nothing queued during the outage: %+v", st)
		}
	}
	waitFor(t, 5*time.Second, "outage end", func() bool { return !srv.InOutage() })
	write(1000)
	closeShipper(t, s, 10*time.Second)

	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), next)
	st := s.Stats()
	retries := st.Retried - before
	t.Logf("%d retries during the %v outage", retries, outage)
	// Backoff from 5 ms doubling to a 50 ms cap (waits in [d/2, d]) allows
	// at most about 50 attempts in one second; a hot loop would make
	// thousands.
	if retries < 5 || retries > 60 {
		t.Errorf("%d retries during a %v outage, want between 5 and 60", retries, outage)
	}
	if st.Dropped != 0 {
		t.Errorf("dropped %d", st.Dropped)
	}
	checkInvariant(t, st)
}

// TestSustainedOutage is the 60-second outage, with every duration (outage,
// backoff, flush interval, pacing) scaled down 40× unless
// CWLOGS_REALTIME_OUTAGE=1 runs it in real time. The endpoint answers 503
// throughout; the shipper keeps buffering (nothing dropped, the queue grows),
// then delivers every record once, in order.
func TestSustainedOutage(t *testing.T) {
	scale := 1.0 / 40
	if os.Getenv("CWLOGS_REALTIME_OUTAGE") == "1" {
		scale = 1
	}
	d := func(v time.Duration) time.Duration { return time.Duration(float64(v) * scale) }

	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.FlushInterval = d(DefaultFlushInterval)
	cfg.RetryMin = d(DefaultRetryMin)
	cfg.RetryMax = d(DefaultRetryMax)
	s := startShipper(t, srv, cfg)

	// 50 records per (scaled) second: 3,000 during the outage.
	const perTick = 50
	next := 0
	tick := func() {
		for range perTick {
			s.Write(line(0, next, 200))
			next++
		}
		time.Sleep(d(time.Second))
	}
	for range 5 {
		tick()
	}
	waitFor(t, d(30*time.Second)+5*time.Second, "lines before the outage", func() bool { return srv.EventCount(cfg.Group, cfg.Stream) == next })

	// The outage is ended by the test, not by a timer: a timer could end
	// it while the last tick sleeps, and a retry land before the count
	// below is taken.
	srv.Outage(time.Hour, cwlogstest.Outage503)
	stored := srv.EventCount(cfg.Group, cfg.Stream)
	calls := srv.Calls("PutLogEvents")
	var queued []int
	for end := time.Now().Add(d(60 * time.Second)); time.Now().Before(end); {
		tick()
		queued = append(queued, s.Stats().QueuedRecords)
	}
	got := srv.EventCount(cfg.Group, cfg.Stream)
	attempts := srv.Calls("PutLogEvents") - calls
	srv.EndOutage()
	if got != stored {
		t.Fatalf("events stored during the outage: %d → %d", stored, got)
	}
	if len(queued) < 10 || queued[len(queued)-1] < queued[len(queued)/2] || queued[len(queued)-1] < 40*perTick {
		t.Fatalf("queue did not keep growing during the outage: %v", queued)
	}
	t.Logf("%d PutLogEvents attempts during the outage; queue sizes %v", attempts, queued)
	// Capped at RetryMax (30 s scaled) with waits of at least half of it,
	// a 60 s outage allows only a handful of attempts after the ramp-up.
	if attempts < 3 || attempts > 20 {
		t.Errorf("%d PutLogEvents attempts during the outage, want 3..20", attempts)
	}
	for range 5 {
		tick()
	}
	closeShipper(t, s, d(2*DefaultRetryMax)+10*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), next)
	st := s.Stats()
	if st.Dropped != 0 || st.Shipped != uint64(next) {
		t.Errorf("stats %+v", st)
	}
	checkInvariant(t, st)
}

// TestOutageOverflowCountsEveryDrop: an outage outlasting the buffer drops
// the oldest queued records (all of one source); the dropped counter equals
// the records missing at the end, exactly, the survivors are the batch in
// flight plus the newest records, and the stream holds one loss event
// saying how many were lost.
func TestOutageOverflowCountsEveryDrop(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.BufferBytes = MinBufferBytes
	s := startShipper(t, srv, cfg)
	srv.Outage(time.Hour, cwlogstest.OutageRefuse)

	const n = 12000 // about 12 MiB through a 4 MiB buffer
	var maxQueued int64
	for i := range n {
		s.Write(line(0, i, 1000))
		if i%100 == 0 {
			st := s.Stats()
			maxQueued = max(maxQueued, st.QueuedBytes)
			if i == 200 {
				// Let the worker take its first batch and start retrying.
				time.Sleep(30 * time.Millisecond)
			}
		}
	}
	if maxQueued > int64(cfg.BufferBytes) {
		t.Errorf("queued %d bytes, above the %d-byte buffer", maxQueued, cfg.BufferBytes)
	}
	if st := s.Stats(); st.Dropped == 0 {
		t.Fatalf("nothing dropped: %+v", st)
	}
	waitFor(t, 2*time.Second, "drop warning", func() bool { return logs.count("dropped records") > 0 })
	srv.EndOutage()
	closeShipper(t, s, 20*time.Second)

	var events []cwlogstest.Event
	var losses []lossEvent
	for _, e := range srv.Events(cfg.Group, cfg.Stream) {
		if _, _, ok := parseLine(e.Message); ok {
			events = append(events, e)
			continue
		}
		var le lossEvent
		if err := json.Unmarshal([]byte(e.Message), &le); err != nil || le.Kind != LossKind {
			t.Fatalf("unexpected event %.80q (%v)", e.Message, err)
		}
		losses = append(losses, le)
	}
	st := s.Stats()
	// The batch in flight through the outage was taken before the drops;
	// the next carries the loss event, telling of them all.
	if len(losses) != 1 || losses[0].Lost != st.Dropped || st.LossEvents != 1 || losses[0].LostSince.After(losses[0].Time) {
		t.Errorf("loss events %+v (LossEvents %d), want one telling of %d", losses, st.LossEvents, st.Dropped)
	}
	if missing := uint64(n - len(events)); st.Dropped != missing {
		t.Fatalf("dropped counter %d, records missing %d", st.Dropped, missing)
	}
	// Survivors: a prefix (the batch in flight when the buffer filled) and
	// a suffix (the newest records), in order, without duplicates.
	prev, gaps := -1, 0
	for _, e := range events {
		_, i, _ := parseLine(e.Message)
		if i <= prev {
			t.Fatalf("line %d after line %d", i, prev)
		}
		if i != prev+1 {
			gaps++
		}
		prev = i
	}
	if gaps != 1 || prev != n-1 {
		t.Errorf("survivors are not the oldest batch plus the newest records (gaps=%d, last=%d)", gaps, prev)
	}
	checkInvariant(t, st)
}

// TestMemoryStaysBounded writes five times the buffer during an outage and
// checks the heap grows by no more than the buffer (plus allocator rounding
// and one batch in flight).
func TestMemoryStaysBounded(t *testing.T) {
	srv, s, cfg, growth, limit := outageHeapGrowth(t, func(s *Shipper, cfg Config) {
		for i := range 5 * cfg.BufferBytes / 250 {
			s.Write(line(0, i, 250))
		}
	})
	t.Logf("heap grew by %.1f MiB for a %d MiB buffer (queued %d bytes)", float64(growth)/(1<<20), cfg.BufferBytes>>20, s.Stats().QueuedBytes)
	if growth > limit {
		t.Errorf("heap grew by %d bytes, above %d", growth, limit)
	}
	if st := s.Stats(); st.QueuedBytes > int64(cfg.BufferBytes) || st.Dropped == 0 {
		t.Errorf("stats %+v", st)
	}
	srv.EndOutage()
}

func TestBatchLimits(t *testing.T) {
	t.Run("events", func(t *testing.T) {
		srv := cwlogstest.NewServer(t)
		cfg := testConfig()
		cfg.FlushInterval = time.Hour // only full batches until Close
		s := startShipper(t, srv, cfg)
		const n = 25000
		for i := range n {
			s.Write(line(0, i, 30))
		}
		closeShipper(t, s, 20*time.Second)
		checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), n)
		batches := srv.Batches()
		if len(batches) < 3 {
			t.Fatalf("%d batches for %d events", len(batches), n)
		}
		for _, b := range batches {
			if b.Events > MaxBatchEvents {
				t.Errorf("batch of %d events", b.Events)
			}
		}
		if batches[0].Events != MaxBatchEvents {
			t.Errorf("first batch has %d events, want a full one (%d)", batches[0].Events, MaxBatchEvents)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		srv := cwlogstest.NewServer(t)
		cfg := testConfig()
		cfg.FlushInterval = time.Hour
		s := startShipper(t, srv, cfg)
		const n = 300 // 3 MB of 10,000-byte lines
		for i := range n {
			s.Write(line(0, i, 10000))
		}
		closeShipper(t, s, 20*time.Second)
		checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), n)
		batches := srv.Batches()
		if len(batches) < 3 {
			t.Fatalf("%d batches for 3 MB", len(batches))
		}
		most := 0
		for _, b := range batches {
			if b.Bytes > MaxBatchBytes {
				t.Errorf("batch of %d bytes", b.Bytes)
			}
			most = max(most, b.Events)
		}
		// (10,000 + 26) × 104 = 1,042,704 fits; 105 would not.
		if most != 104 {
			t.Errorf("fullest batch has %d events, want 104 (packed to the limit)", most)
		}
	})
	t.Run("span", func(t *testing.T) {
		srv := cwlogstest.NewServer(t)
		cfg := testConfig()
		cfg.FlushInterval = time.Hour
		s := startShipper(t, srv, cfg)
		// 3,000 events evenly over three days, all within the 14-day window.
		start := time.Now().Add(-4 * 24 * time.Hour)
		const n = 3000
		step := 3 * 24 * time.Hour / n
		for i := range n {
			s.Ship(start.Add(time.Duration(i)*step), line(0, i, 40), records.Source{})
		}
		closeShipper(t, s, 20*time.Second)
		checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), n)
		batches := srv.Batches()
		if len(batches) < 3 {
			t.Fatalf("%d batches for three days of events", len(batches))
		}
		for _, b := range batches {
			if span := time.Duration(b.MaxTS-b.MinTS) * time.Millisecond; span >= 24*time.Hour {
				t.Errorf("batch spans %v", span)
			}
		}
	})
	t.Run("unsorted", func(t *testing.T) {
		srv := cwlogstest.NewServer(t)
		cfg := testConfig()
		cfg.FlushInterval = time.Hour
		s := startShipper(t, srv, cfg)
		now := time.Now()
		for i := range 100 {
			s.Ship(now.Add(-time.Duration(i)*time.Millisecond), line(0, 99-i, 40), records.Source{})
		}
		closeShipper(t, s, 5*time.Second)
		// Sorted by timestamp, which here is the reverse of arrival.
		checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 100)
	})
}

func TestOversizedLineTruncated(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	big := append([]byte("p=00 seq=00000000 "), strings.Repeat("a", 300*1024)...)
	multi := append([]byte("p=00 seq=00000001 "), strings.Repeat("é", 200*1024)...) // 400 KiB of 2-byte runes
	s.Write(big)
	s.Write(multi)
	closeShipper(t, s, 10*time.Second)
	events := srv.Events(cfg.Group, cfg.Stream)
	checkExactlyOnce(t, events, 2)
	for i, src := range [][]byte{big, multi} {
		msg := events[i].Message
		if len(msg) > MaxMessageBytes {
			t.Errorf("event %d: %d bytes, above %d", i, len(msg), MaxMessageBytes)
		}
		cut := strings.LastIndex(msg, "…[truncated ")
		if cut < 0 {
			t.Fatalf("event %d: no truncation marker in %q", i, msg[len(msg)-40:])
		}
		if want := marker(len(src) - cut); msg[cut:] != want {
			t.Errorf("event %d: marker %q, want %q", i, msg[cut:], want)
		}
		if msg[:cut] != string(src[:cut]) {
			t.Errorf("event %d: kept part differs from the line's start", i)
		}
		if len(msg) < MaxMessageBytes-2 {
			t.Errorf("event %d: truncated to %d bytes, wasting room", i, len(msg))
		}
	}
	if st := s.Stats(); st.Truncated != 2 || st.Shipped != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestRejectedEventsCounted(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	now := time.Now()
	s.Ship(now.Add(-15*24*time.Hour), []byte("too old"), records.Source{})
	s.Ship(now, []byte("p=00 seq=00000000 fine"), records.Source{})
	s.Ship(now.Add(3*time.Hour), []byte("too new"), records.Source{})
	s.Ship(now, []byte("p=00 seq=00000001 fine"), records.Source{})
	closeShipper(t, s, 10*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 2)
	st := s.Stats()
	if st.Rejected != 2 || st.Shipped != 2 {
		t.Errorf("stats %+v, want 2 rejected and 2 shipped", st)
	}
	checkInvariant(t, st)
	if logs.count("rejected events") == 0 {
		t.Errorf("rejection not logged")
	}
}

func TestPermanentErrorCountsFailed(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	srv.FailWithCode(1, 400, "InvalidParameterException", "PutLogEvents")
	s.Write([]byte("lost"))
	waitFor(t, 5*time.Second, "the failed batch", func() bool { return s.Stats().Failed == 1 })
	s.Write(line(0, 0, 20))
	closeShipper(t, s, 5*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 1)
	st := s.Stats()
	if st.Failed != 1 || st.Retried != 0 || !strings.Contains(st.LastError, "InvalidParameterException") {
		t.Errorf("stats %+v", st)
	}
	checkInvariant(t, st)
}

// TestRefusedBatchesLogRateLimited: with every batch refused, the error is
// logged for the first at once, not for each one after it; the rest are
// summed up when the shipper closes.
func TestRefusedBatchesLogRateLimited(t *testing.T) {
	const msg = "cwlogs: PutLogEvents refused"
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	srv.FailWithCode(5, 400, "InvalidParameterException", "PutLogEvents")
	summary := "stream=" + cfg.Stream + " batches=4 records=4 err="
	before, summaryBefore := logs.count(msg), logs.count(summary)
	for i := range 5 {
		s.Write(line(0, i, 20))
		waitFor(t, 5*time.Second, "the refused batch", func() bool { return s.Stats().Failed == uint64(i+1) })
	}
	if n := logs.count(msg) - before; n != 1 {
		t.Errorf("%d errors logged for 5 refused batches within a minute, want 1", n)
	}
	closeShipper(t, s, 5*time.Second)
	if n := logs.count(msg) - before; n != 2 || logs.count(summary)-summaryBefore != 1 {
		t.Errorf("%d errors logged by Close, want 2, the last for the 4 batches held back", n)
	}
	checkInvariant(t, s.Stats())
}

func TestRecreatesDeletedGroup(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	s := startShipper(t, srv, cfg)
	s.Write(line(0, 0, 20))
	waitFor(t, 5*time.Second, "first line", func() bool { return srv.EventCount(cfg.Group, cfg.Stream) == 1 })
	srv.DeleteGroup(cfg.Group)
	s.Write(line(0, 0, 20))
	closeShipper(t, s, 5*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 1)
	if srv.Calls("CreateLogGroup") != 2 || srv.Calls("CreateLogStream") != 2 {
		t.Errorf("CreateLogGroup ×%d, CreateLogStream ×%d; want 2 each", srv.Calls("CreateLogGroup"), srv.Calls("CreateLogStream"))
	}
}

// TestRecreatedGroupGetsRetention: a group the shipper created, deleted
// while it runs, is created again with the retention, not left to keep its
// events forever.
func TestRecreatedGroupGetsRetention(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.RetentionDays = 14
	s := startShipper(t, srv, cfg)
	s.Write(line(0, 0, 20))
	waitFor(t, 5*time.Second, "first line", func() bool { return srv.EventCount(cfg.Group, cfg.Stream) == 1 })
	if _, retention := srv.Group(cfg.Group); retention != 14 {
		t.Fatalf("created group has retention %d, want 14", retention)
	}
	srv.DeleteGroup(cfg.Group)
	s.Write(line(0, 0, 20))
	closeShipper(t, s, 5*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 1)
	if exists, retention := srv.Group(cfg.Group); !exists || retention != 14 {
		t.Errorf("recreated group: exists=%v retention=%d, want 14 days", exists, retention)
	}
	if n := srv.Calls("PutRetentionPolicy"); n != 2 {
		t.Errorf("PutRetentionPolicy ×%d, want once per creation (2)", n)
	}
}

// TestConcurrentGroupCreation: several appliances create the same group at
// once, and the service answers one of them OperationAbortedException. That
// is a conflict, not a refusal: the shipper retries, finds the group, creates
// its stream and ships, without an error and without a PutLogEvents doomed to
// fail for want of the stream.
func TestConcurrentGroupCreation(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	srv.CreateGroup(cfg.Group, 0) // by the other appliance
	srv.FailWithCode(1, 400, "OperationAbortedException", "CreateLogGroup")
	errorsBefore := logs.count("cannot create log group or stream")
	s := startShipper(t, srv, cfg)
	s.Write(line(0, 0, 20))
	closeShipper(t, s, 5*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 1)
	if n := logs.count("cannot create log group or stream") - errorsBefore; n != 0 {
		t.Errorf("%d errors logged for a conflict that a retry resolves", n)
	}
	if g, st, p := srv.Calls("CreateLogGroup"), srv.Calls("CreateLogStream"), srv.Calls("PutLogEvents"); g != 2 || st != 1 || p != 1 {
		t.Errorf("CreateLogGroup ×%d, CreateLogStream ×%d, PutLogEvents ×%d; want 2, 1, 1", g, st, p)
	}
	if st := s.Stats(); st.Retried != 1 || st.Failed != 0 {
		t.Errorf("stats %+v, want one retry", st)
	}
}

func TestCloseFlushes(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.FlushInterval = time.Hour
	s := startShipper(t, srv, cfg)
	for i := range 100 {
		s.Write(line(0, i, 50))
	}
	time.Sleep(50 * time.Millisecond)
	if got := srv.EventCount(cfg.Group, cfg.Stream); got != 0 {
		t.Fatalf("%d events sent before the flush interval or Close", got)
	}
	closeShipper(t, s, 5*time.Second)
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 100)
	s.Write([]byte("after close"))
	st := s.Stats()
	if st.Dropped != 1 || st.Shipped != 100 {
		t.Errorf("stats %+v", st)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCloseDeadlineCountsUnshipped(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	srv.CreateStream(cfg.Group, cfg.Stream)
	srv.Outage(time.Hour, cwlogstest.OutageRefuse)
	s := startShipper(t, srv, cfg)
	for i := range 100 {
		s.Write(line(0, i, 50))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "100 records") {
		t.Fatalf("Close = %v, want 100 records unshipped and the deadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v past a 200 ms deadline", d)
	}
	st := s.Stats()
	if st.Dropped != 100 || st.QueuedRecords != 0 || st.QueuedBytes != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariant(t, st)
}

// TestCloseCutsAHungCall: on SIGTERM a call hangs (its connection is dead:
// no answer will come), while a fresh attempt would go through at once.
// Close's deadline (2 s) is far below RequestTimeout (30 s): the hung call
// must be given up in time for a retry to ship the records, not waited on
// until Close gives up on everything. The call hangs when Close begins, or
// begins once Close has (the first call of a shipper that had nothing to
// send before).
func TestCloseCutsAHungCall(t *testing.T) {
	for _, tc := range []struct {
		name       string
		op         string
		afterClose bool
	}{
		{"PutLogEvents", "PutLogEvents", false},
		{"CreateLogGroup", "CreateLogGroup", false},
		{"after Close", "CreateLogGroup", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := cwlogstest.NewServer(t)
			cfg := testConfig()
			if tc.afterClose {
				cfg.FlushInterval = time.Hour // nothing is sent before Close
			}
			s := startShipper(t, srv, cfg)
			next := 0
			if tc.op == "PutLogEvents" {
				// Set up first, so that the hung call is a batch.
				s.Write(line(0, next, 50))
				next++
				waitFor(t, 5*time.Second, "the first line", func() bool { return srv.EventCount(cfg.Group, cfg.Stream) == 1 })
			}
			calls := srv.Calls(tc.op)
			srv.SetLatency(time.Hour) // the next call hangs
			for range 100 {
				s.Write(line(0, next, 50))
				next++
			}
			start := time.Now()
			closed := make(chan error, 1)
			closeNow := func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				closed <- s.Close(ctx)
			}
			if tc.afterClose {
				go closeNow()
			}
			waitFor(t, 5*time.Second, "the hung call", func() bool { return srv.Calls(tc.op) == calls+1 })
			srv.SetLatency(0) // later calls are answered at once
			if !tc.afterClose {
				start = time.Now()
				go closeNow()
			}
			if err := <-closed; err != nil {
				t.Fatalf("Close: %v", err)
			}
			t.Logf("Close took %v", time.Since(start).Round(time.Millisecond))
			checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), next)
			st := s.Stats()
			if st.Shipped != uint64(next) || st.Dropped != 0 {
				t.Errorf("stats %+v", st)
			}
			checkInvariant(t, st)
		})
	}
}

// TestCloseRetriesFast: under throttling with a steady-state backoff of a
// minute, Close does not wait out that backoff: it retries within
// closingRetryMax and ships everything well inside its deadline.
func TestCloseRetriesFast(t *testing.T) {
	srv := cwlogstest.NewServer(t)
	cfg := testConfig()
	cfg.RetryMin, cfg.RetryMax = time.Minute, time.Minute
	srv.CreateStream(cfg.Group, cfg.Stream)
	srv.Throttle(3, "PutLogEvents")
	s := startShipper(t, srv, cfg)
	for i := range 10 {
		s.Write(line(0, i, 50))
	}
	waitFor(t, 5*time.Second, "a throttled attempt", func() bool { return srv.Calls("PutLogEvents") >= 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Two more throttled answers, then success: at most three waits of
	// closingRetryMax, nowhere near one minute.
	if d := time.Since(start); d > 3*closingRetryMax+2*time.Second {
		t.Errorf("Close took %v under throttling", d)
	}
	checkExactlyOnce(t, srv.Events(cfg.Group, cfg.Stream), 10)
}

// outageHeapGrowth starts a shipper with an 8 MiB buffer while the server
// refuses every call, lets write fill it, and returns the server, the
// shipper, its config, how far the heap grew across the start and the
// writes, and the bound that growth must stay under: the buffer plus a
// quarter for allocator rounding and 4 MiB for one batch in flight. The
// caller ends the outage.
func outageHeapGrowth(t *testing.T, write func(s *Shipper, cfg Config)) (srv *cwlogstest.Server, s *Shipper, cfg Config, growth, limit int64) {
	t.Helper()
	srv = cwlogstest.NewServer(t)
	cfg = testConfig()
	cfg.BufferBytes = 8 << 20
	srv.Outage(time.Hour, cwlogstest.OutageRefuse)

	var before, after runtime.MemStats
	gc()
	runtime.ReadMemStats(&before)
	s = startShipper(t, srv, cfg)
	write(s, cfg)
	gc()
	runtime.ReadMemStats(&after)
	growth = int64(after.HeapAlloc) - int64(before.HeapAlloc)
	limit = int64(cfg.BufferBytes)*5/4 + 4<<20
	return srv, s, cfg, growth, limit
}

// gc collects twice: sync.Pool buffers survive one collection.
func gc() {
	runtime.GC()
	runtime.GC()
}
