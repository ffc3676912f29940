package cwlogs

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/cwlogs/cwlogstest"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// benchLine is a typical access record, about 400 bytes.
var benchLine = []byte(`{"time":"2026-01-02T03:04:05.123456789Z","kind":"http","action":"bump","rule":"allow-github",` +
	`"endpoint":"vpce-0123456789abcdef0","attachment":"0123456789abcdef","flow_cookie":"89abcdef",` +
	`"client_ip":"10.1.2.3","client_port":51234,"dest_ip":"140.82.112.3","dest_port":443,"bytes_out":1834,` +
	`"bytes_in":48213,"duration_ms":182.4,"result":"ok","sni":"api.github.com","tls_version":"1.3",` +
	`"method":"GET","scheme":"https","host":"api.github.com","path":"/repos/x/y","status":200}` + "\n")

// BenchmarkShip measures records per second shipped end to end: Ship, the
// batching worker, the real SDK client (request signing, JSON encoding,
// HTTP) and the local endpoint, which counts events without keeping them.
// The producer is held back when the queue passes half the buffer, so the
// figure is delivery throughput, not the speed of dropping. It also reports
// the largest heap in use seen while shipping.
func BenchmarkShip(b *testing.B) {
	srv := cwlogstest.NewServer(b)
	srv.SetStoreEvents(false)
	cfg := testConfig()
	cfg.FlushInterval = 100 * time.Millisecond
	s, err := NewWithClient(context.Background(), srv.Client(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	half := int64(DefaultBufferBytes / 2)
	var ms runtime.MemStats
	var peak uint64
	b.SetBytes(int64(len(benchLine)))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		s.Ship(time.Time{}, benchLine, records.Source{})
		if i%4096 == 4095 {
			for s.Stats().QueuedBytes > half {
				time.Sleep(100 * time.Microsecond)
			}
		}
		if i%(1<<14) == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	runtime.ReadMemStats(&ms)
	peak = max(peak, ms.HeapInuse)

	st := s.Stats()
	if st.Shipped != uint64(b.N) || srv.EventCount(cfg.Group, cfg.Stream) != b.N {
		b.Fatalf("shipped %d, endpoint stored %d, want %d (stats %+v)", st.Shipped, srv.EventCount(cfg.Group, cfg.Stream), b.N, st)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(peak)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(b.N)/float64(max(st.Batches, 1)), "records/batch")
}

// BenchmarkShipCaller measures what Ship costs the caller (the data path):
// the endpoint is down, so the worker sends nothing and, once the buffer is
// full, every call also evicts the oldest record.
func BenchmarkShipCaller(b *testing.B) {
	srv := cwlogstest.NewServer(b)
	srv.Outage(time.Hour, cwlogstest.OutageRefuse)
	cfg := testConfig()
	cfg.RetryMin, cfg.RetryMax = time.Second, time.Second
	s, err := NewWithClient(context.Background(), srv.Client(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		s.Close(ctx)
	}()
	b.SetBytes(int64(len(benchLine)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Ship(time.Time{}, benchLine, records.Source{})
	}
}
