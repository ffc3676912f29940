package cwlogs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
)

// logs captures what the package logs, so tests can check warnings and the
// test output stays quiet.
var logs capture

type capture struct {
	mu   sync.Mutex
	msgs []string
}

func (c *capture) Enabled(context.Context, slog.Level) bool { return true }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	c.mu.Lock()
	c.msgs = append(c.msgs, b.String())
	c.mu.Unlock()
	return nil
}
func (c *capture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *capture) WithGroup(string) slog.Handler      { return c }

// count returns how many captured messages contain s.
func (c *capture) count(s string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

func TestMain(m *testing.M) {
	// Never reach a real metadata service or AWS from this package's tests.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	slog.SetDefault(slog.New(&logs))
	os.Exit(m.Run())
}

// testConfig returns a configuration with timings scaled down for tests.
func testConfig() Config {
	return Config{
		Group:         "gwlbproxy-test",
		Stream:        "i-0123456789abcdef0",
		FlushInterval: 20 * time.Millisecond,
		RetryMin:      5 * time.Millisecond,
		RetryMax:      50 * time.Millisecond,
	}
}

// startShipper starts a Shipper against srv with the real SDK client; it is
// closed when the test ends if the test did not close it.
func startShipper(t testing.TB, srv *cwlogstest.Server, cfg Config) *Shipper {
	t.Helper()
	s, err := NewWithClient(t.Context(), srv.Client(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// line returns the numbered test line i of producer p, padded to about size
// bytes.
func line(p, i, size int) []byte {
	b := fmt.Appendf(nil, "p=%02d seq=%08d ", p, i)
	for len(b) < size {
		b = append(b, 'x')
	}
	return append(b, '\n')
}

// parseLine returns the producer and sequence number of a test line.
func parseLine(msg string) (p, i int, ok bool) {
	if len(msg) < 18 || !strings.HasPrefix(msg, "p=") || msg[4:9] != " seq=" {
		return 0, 0, false
	}
	p, err1 := strconv.Atoi(msg[2:4])
	i, err2 := strconv.Atoi(msg[9:17])
	return p, i, err1 == nil && err2 == nil
}

// checkExactlyOnce verifies that events hold lines 0..n-1 of producer 0 once
// each, in order.
func checkExactlyOnce(t *testing.T, events []cwlogstest.Event, n int) {
	t.Helper()
	if len(events) != n {
		t.Errorf("stored %d events, want %d", len(events), n)
	}
	for idx, e := range events {
		_, i, ok := parseLine(e.Message)
		if !ok {
			t.Fatalf("event %d: unexpected message %.40q", idx, e.Message)
		}
		if i != idx {
			t.Fatalf("event %d holds line %d: duplicate, loss or reordering", idx, i)
		}
	}
}

// checkInvariant verifies that every record received is accounted for once.
func checkInvariant(t *testing.T, st Stats) {
	t.Helper()
	sum := st.Shipped + st.Rejected + st.Failed + st.Dropped + uint64(st.QueuedRecords)
	if sum != st.Received {
		t.Errorf("shipped %d + rejected %d + failed %d + dropped %d + queued %d = %d, received %d",
			st.Shipped, st.Rejected, st.Failed, st.Dropped, st.QueuedRecords, sum, st.Received)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func closeShipper(t *testing.T, s *Shipper, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
