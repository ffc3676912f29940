package appliance

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkRecordFlood measures what one client's allowed requests cost
// the access log once its budget of request text (proxy/textbudget.go,
// 16 MiB, then 1 MiB a second) is spent: GETs with a long path and a
// 1 KB User-Agent, pipelined 64 at a time on one kept-alive cleartext
// connection to an origin on loopback answering 204 at once. A flood as
// long as the budget's burst goes first, untimed; then b.N requests are
// timed. It reports the records' bytes a second and a request, the
// client's bytes a second, and requests a second. The client, the
// appliance and the origin share this machine's cores, so the rates move
// with the machine; the bytes a record hold still.
func BenchmarkRecordFlood(b *testing.B) {
	for _, pathLen := range []int{1, 3000, 30000} {
		b.Run(fmt.Sprintf("path=%d", pathLen), func(b *testing.B) { benchRecordFlood(b, pathLen) })
	}
}

func benchRecordFlood(b *testing.B, pathLen int) {
	cfg := filepath.Join(b.TempDir(), "gwlbproxy.yaml")
	os.WriteFile(cfg, []byte("policy:\n  default: allow\n"), 0o644)
	r := newRig(b, func(o *Options) { o.Config = cfg }, nil)
	origin := listenHTTP204(b, r.net.server(3))
	req := fmt.Sprintf("GET /%s HTTP/1.1\r\nHost: flood.example.test\r\nUser-Agent: %s\r\n\r\n",
		strings.Repeat("p", pathLen), strings.Repeat("u", 1000))
	c := must(r.client.DialTCP(ctxT(b, 5*time.Second), origin))(b)
	defer c.Close()
	f := &pipeline{c: c, req: []byte(req)}
	go f.read()

	// The burst: 16 MiB of text past the 256 bytes a field keeps.
	f.send(b, (16<<20)/(pathLen+1000-2*256)+100)
	logSize := func() int64 {
		// The records of the requests answered are written within
		// the writer's 10 ms of gathering: wait for the file to stop
		// growing.
		var last int64 = -1
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			st, err := os.Stat(r.logPath)
			if err != nil {
				b.Fatal(err)
			}
			if st.Size() == last {
				return last
			}
			last = st.Size()
		}
		b.Fatal("the access log kept growing")
		return 0
	}
	log0 := logSize()
	b.ResetTimer()
	start := time.Now()
	f.send(b, b.N)
	elapsed := time.Since(start)
	b.StopTimer()
	grew := logSize() - log0
	b.ReportMetric(float64(grew)/elapsed.Seconds()/1e6, "records-MB/s")
	b.ReportMetric(float64(grew)/float64(b.N), "record-B/req")
	b.ReportMetric(float64(b.N*len(req))/elapsed.Seconds()/1e6, "client-MB/s")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
}

// pipeline sends req on c, keeping at most 64 unanswered.
type pipeline struct {
	c              net.Conn
	req            []byte
	sent, answered atomic.Int64
	readErr        atomic.Pointer[error] // what ended the reading
}

func (f *pipeline) read() {
	br := bufio.NewReader(f.c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			f.readErr.Store(&err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		f.answered.Add(1)
	}
}

// send sends n more requests, 16 to a write, and waits for their answers.
func (f *pipeline) send(b *testing.B, n int) {
	var batch bytes.Buffer
	for range 16 {
		batch.Write(f.req)
	}
	target := f.sent.Load() + int64(n)
	deadline := time.Now().Add(5 * time.Minute)
	for f.sent.Load() < target {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d requests sent in 5 minutes", f.sent.Load(), target)
		}
		if p := f.readErr.Load(); p != nil {
			b.Fatalf("%d of %d requests answered: %v", f.answered.Load(), target, *p)
		}
		if f.sent.Load()-f.answered.Load() > 64 {
			time.Sleep(100 * time.Microsecond)
			continue
		}
		k := min(16, int(target-f.sent.Load()))
		f.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := f.c.Write(batch.Bytes()[:k*len(f.req)]); err != nil {
			b.Fatalf("sending: %v", err)
		}
		f.sent.Add(int64(k))
	}
	for f.answered.Load() < target {
		if p := f.readErr.Load(); p != nil {
			b.Fatalf("%d of %d requests answered: %v", f.answered.Load(), target, *p)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d requests answered in 5 minutes", f.answered.Load(), target)
		}
		time.Sleep(time.Millisecond)
	}
}

// listenHTTP204 is an HTTP/1 origin on addr answering every request 204 at
// once.
func listenHTTP204(b *testing.B, addr netip.Addr) netip.AddrPort {
	ln := must(net.Listen("tcp", netip.AddrPortFrom(addr, 0).String()))(b)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
