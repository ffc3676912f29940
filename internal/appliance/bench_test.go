package appliance

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end-to-end benchmarks run one in-process rig: a gVisor client stack
// behind the GWLB simulator, the appliance, and a kernel server on
// loopback, all on this machine's cores. Each iteration measures the same
// work through the appliance and directly (the kernel's loopback), so the
// reported ratio comes from one run.

// BenchmarkBulkTCP downloads 32 MiB per iteration, through the appliance and
// directly, and reports both rates and their ratio.
func BenchmarkBulkTCP(b *testing.B) {
	const chunk = 32 << 20
	r := newRig(b, nil, nil)
	srv := listenTCP(b, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		io.Copy(c, io.LimitReader(zeroReader{}, chunk))
	})
	var through, direct, cpu time.Duration
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		start, cpu0 := time.Now(), processCPU(b)
		c := must(r.client.DialTCP(ctxT(b, 10*time.Second), srv))(b)
		if n, err := io.Copy(io.Discard, c); err != nil || n != chunk {
			b.Fatalf("through the appliance: %d bytes, %v", n, err)
		}
		c.Close()
		through += time.Since(start)
		cpu += processCPU(b) - cpu0

		start = time.Now()
		d := must(net.Dial("tcp", srv.String()))(b)
		if n, err := io.Copy(io.Discard, d); err != nil || n != chunk {
			b.Fatalf("direct: %d bytes, %v", n, err)
		}
		d.Close()
		direct += time.Since(start)
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(chunk) * float64(b.N) * 8 / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(through), "appliance-Mbit/s")
	b.ReportMetric(mbps(direct), "direct-Mbit/s")
	b.ReportMetric(mbps(through)/mbps(direct), "appliance/direct")
	// The CPU the process spent per GiB through the appliance: the
	// client's stack, the simulator and the server are in it too, but
	// unlike the rates it does not move with what else the machine runs.
	b.ReportMetric(cpu.Seconds()/(float64(chunk)*float64(b.N)/(1<<30)), "cpu-s/GiB")
}

// BenchmarkBulkTCPUpload uploads 32 MiB per iteration, through the
// appliance and directly: the data now arrives from the GWLB, as GENEVE
// datagrams the readers take in and coalesce.
func BenchmarkBulkTCPUpload(b *testing.B) {
	const chunk = 32 << 20
	r := newRig(b, nil, nil)
	srv := listenTCP(b, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		// The whole upload, then one byte back: the client's end does not
		// wait on half-close, which the appliance may not relay.
		if n, _ := io.CopyN(io.Discard, c, chunk); n == chunk {
			c.Write([]byte{1})
		}
		c.Close()
	})
	send := func(c net.Conn, what string) {
		defer c.Close()
		if n, err := io.Copy(c, io.LimitReader(zeroReader{}, chunk)); err != nil || n != chunk {
			b.Fatalf("%s: sent %d bytes, %v", what, n, err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			b.Fatalf("%s: the server did not confirm the upload: %v", what, err)
		}
	}
	var through, direct, cpu time.Duration
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		start, cpu0 := time.Now(), processCPU(b)
		send(must(r.client.DialTCP(ctxT(b, 10*time.Second), srv))(b), "through the appliance")
		through += time.Since(start)
		cpu += processCPU(b) - cpu0

		start = time.Now()
		send(must(net.Dial("tcp", srv.String()))(b), "direct")
		direct += time.Since(start)
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(chunk) * float64(b.N) * 8 / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(through), "appliance-Mbit/s")
	b.ReportMetric(mbps(direct), "direct-Mbit/s")
	b.ReportMetric(mbps(through)/mbps(direct), "appliance/direct")
	b.ReportMetric(cpu.Seconds()/(float64(chunk)*float64(b.N)/(1<<30)), "cpu-s/GiB")
}

// processCPU is the CPU time (user and system) the test process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// BenchmarkSmallPackets measures request/response rate with 64-byte UDP
// datagrams over 16 concurrent flows, through the appliance and directly.
func BenchmarkSmallPackets(b *testing.B) {
	const flows = 16
	r := newRig(b, nil, nil)
	srv := serveUDP(b, netip.AddrPortFrom(r.net.server(3), 0), func(d []byte) []byte { return d })
	through := make([]net.Conn, flows)
	direct := make([]net.Conn, flows)
	for i := range flows {
		through[i] = must(r.client.DialUDP(srv))(b)
		direct[i] = must(net.Dial("udp", srv.String()))(b)
		defer through[i].Close()
		defer direct[i].Close()
	}
	run := func(conns []net.Conn, perFlow int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg, buf := make([]byte, 64), make([]byte, 2048)
				for range perFlow {
					c.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := c.Write(msg); err != nil {
						b.Error(err)
						return
					}
					if _, err := c.Read(buf); err != nil {
						b.Error(err) // a lost datagram: the run is void
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	run(through, 10) // warm the flows up
	perFlow := max(b.N/flows, 1)
	b.ResetTimer()
	tThrough := run(through, perFlow)
	tDirect := run(direct, perFlow)
	b.StopTimer()
	n := float64(perFlow * flows)
	b.ReportMetric(n/tThrough.Seconds(), "appliance-req/s")
	b.ReportMetric(n/tDirect.Seconds(), "direct-req/s")
	b.ReportMetric(tDirect.Seconds()/tThrough.Seconds(), "appliance/direct")
}

// BenchmarkTCPRequests: small requests and responses one after another on
// one relayed TCP connection, as a kept-alive protocol exchanges them. It
// reports the GENEVE datagrams per request each way: one request and one
// response is the floor, and every pure ACK the appliance's stack sends
// on its own, instead of in the response, is one more datagram the GWLB,
// the client and the appliance each handle.
func BenchmarkTCPRequests(b *testing.B) {
	const size = 300
	r := newRig(b, nil, nil)
	srv := listenTCP(b, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				c.Close()
				return
			}
			time.Sleep(100 * time.Microsecond) // the destination's work: longer than the stack takes to ACK
			if _, err := c.Write(buf); err != nil {
				c.Close()
				return
			}
		}
	})
	c := must(r.client.DialTCP(ctxT(b, 10*time.Second), srv))(b)
	defer c.Close()
	req, resp := make([]byte, size), make([]byte, size)
	exchange := func() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			b.Fatal(err)
		}
	}
	for range 10 {
		exchange()
	}
	time.Sleep(50 * time.Millisecond) // the warm-up's last ACKs
	st0, cpu0 := r.sim.Stats(), processCPU(b)
	b.ResetTimer()
	for range b.N {
		exchange()
	}
	b.StopTimer()
	time.Sleep(50 * time.Millisecond)
	st, cpu := r.sim.Stats(), processCPU(b)-cpu0
	n := float64(b.N)
	b.ReportMetric(float64(st.Sent-st0.Sent)/n, "to-appliance-datagrams/req")
	b.ReportMetric(float64(st.Received-st0.Received)/n, "from-appliance-datagrams/req")
	b.ReportMetric(cpu.Seconds()*1e6/n, "process-cpu-µs/req")
}
