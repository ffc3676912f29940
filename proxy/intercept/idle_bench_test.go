package intercept_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

// BenchmarkIdleBumpedConn measures what an idle bumped HTTP/1.1
// connection holds in this process: n connections are bumped, carry one
// request each and are left open, then the heap and goroutine stacks in use
// are compared with before. Reported per connection: heap-B/conn and
// stack-B/conn (the test's client and upstream are in them too, the same
// before and after any change), goroutines/conn, and proxy-goroutines/conn,
// the goroutines running interceptor, goproxy or HTTP transport code.
//
// With GWLBPROXY_IDLE_HEAPPROFILE=FILE it writes a heap profile while the
// connections are open (run with -test.memprofilerate=1 for every
// allocation), for go tool pprof -sample_index=inuse_space.
func BenchmarkIdleBumpedConn(b *testing.B) {
	const n = 200
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	for range b.N {
		r := newRig(b, testPolicy)
		leaf := r.upLeaf("www.example.test")
		clientCfg := &tls.Config{ServerName: "www.example.test", RootCAs: r.caPool(), NextProtos: []string{"http/1.1"}}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0, p0 := goroutines()
		conns := make([]*tls.Conn, 0, n)
		for range n {
			upEnd, _ := r.startUpstream(leaf, "http/1.1")
			c, _ := r.connect(upEnd, tlsDest)
			tc := tls.Client(c, clientCfg)
			_ = tc.SetDeadline(time.Now().Add(waitLimit))
			if _, err := io.WriteString(tc, "GET /idle HTTP/1.1\r\nHost: www.example.test\r\n\r\n"); err != nil {
				b.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			_ = tc.SetDeadline(time.Time{})
			conns = append(conns, tc)
		}
		time.Sleep(200 * time.Millisecond) // records written, goroutines parked
		runtime.GC()
		runtime.ReadMemStats(&after)
		g1, p1 := goroutines()
		if path := os.Getenv("GWLBPROXY_IDLE_HEAPPROFILE"); path != "" {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.WriteHeapProfile(f); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/n, "heap-B/conn")
		b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/n, "stack-B/conn")
		b.ReportMetric(float64(g1-g0)/n, "goroutines/conn")
		b.ReportMetric(float64(p1-p0)/n, "proxy-goroutines/conn")
		for _, c := range conns {
			c.Close()
		}
	}
}

// goroutines counts all goroutines, and those running code of the proxy's
// side: the interceptor, goproxy, or an HTTP transport's connection.
func goroutines() (all, proxy int) {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		all++
		if strings.Contains(g, "elazarl/goproxy") || strings.Contains(g, "persistConn") ||
			strings.Contains(g, "proxy/intercept.") {
			proxy++
		}
	}
	return all, proxy
}
