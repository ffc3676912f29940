package proxy

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff/quic"
)

// gateShapes are what clients send that leave their ClientHello
// incomplete, so that their flows wait at the QUIC gate: the shapes
// policy.md gives the memory of.
var gateShapes = []struct {
	name      string
	datagrams func(tb testing.TB) [][]byte
}{
	{"first datagram", func(tb testing.TB) [][]byte {
		return quicFirstFlight(tb, "www.example.test")[:1]
	}},
	{"first datagram and 0-RTT to 24 KiB", func(tb testing.TB) [][]byte {
		// 15 datagrams: a 16th would be the gate's last, refused.
		first := quicFirstFlight(tb, "www.example.test")[0]
		out := [][]byte{first}
		size := (quicGateBytes - len(first)) / (quicGateDatagrams - 2)
		for range quicGateDatagrams - 2 {
			out = append(out, quic0RTT(quicDCID(tb, first), size))
		}
		return out
	}},
	{"15 Initials of 1,452 bytes", func(tb testing.TB) [][]byte {
		// quic-go offering 200 ALPN names of 100 bytes: a ClientHello
		// of about 22 KB, 16 Initials.
		var alpn []string
		for i := range 200 {
			alpn = append(alpn, fmt.Sprintf("%03d%s", i, strings.Repeat("a", 97)))
		}
		sent := quicClientSent(tb, &tls.Config{ServerName: "www.example.test", NextProtos: alpn}, &quicgo.Config{InitialPacketSize: 1452})
		if len(sent) < quicGateDatagrams {
			tb.Fatalf("quic-go sent %d datagrams, want its ClientHello in %d", len(sent), quicGateDatagrams)
		}
		return sent[:quicGateDatagrams-1]
	}},
	{"two Initials of 8,400 bytes", func(tb testing.TB) [][]byte {
		// The GWLB's MTU is 8,500 bytes.
		return quicHelloStart(tb, 2, 8400, 40000, 1)
	}},
	{"one Initial of 24,000 bytes", func(tb testing.TB) [][]byte {
		// Reassembled from IP fragments, just under the gate's bound.
		return quicHelloStart(tb, 1, 24000, 40000, 1)
	}},
	{"15 Initials to 24 KiB, each to a new connection ID", func(tb testing.TB) [][]byte {
		// The most the gate and the Assembler let a flow hold: the
		// gate's bytes, all CRYPTO data, and the keys of 8 connection
		// IDs, all the Assembler keeps.
		return quicHelloStart(tb, quicGateDatagrams-1, quicGateBytes/(quicGateDatagrams-1), 40000, quicGateDatagrams-1)
	}},
}

// TestQUICGateFlowMemory measures what a flow waiting at the QUIC gate
// holds, heap and goroutine stack, for each of gateShapes (the figures of
// policy.md): 256 flows of one client send the datagrams, and the heap and
// stacks grown once they all wait, after a collection, are shared among
// them. A client may hold --max-udp-flows-per-client (1,024) flows there.
func TestQUICGateFlowMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what is measured")
	}
	for _, shape := range gateShapes {
		t.Run(shape.name, func(t *testing.T) {
			datagrams := shape.datagrams(t)
			checkIncomplete(t, datagrams)
			held := 0
			for _, d := range datagrams {
				held += len(d)
			}
			if held > quicGateBytes || len(datagrams) >= quicGateDatagrams {
				t.Fatalf("%d datagrams of %d bytes: past the gate's bounds", len(datagrams), held)
			}
			heap, stack := measureGateFlows(t, datagrams, 256)
			t.Logf("%d datagrams of %d B: %d B heap + %d B stack = %.1f KiB a flow, %.1f KiB past the datagrams",
				len(datagrams), held, heap, stack, float64(heap+stack)/1024, float64(heap+stack-int64(held))/1024)
			// The datagrams; the CRYPTO data read from them, a copy
			// at most as large, both in the allocator's size classes
			// (up to 1/8 more); and the flow, the Assembler's keys (of
			// 8 connection IDs at most, about 1.3 KiB each) and the
			// goroutine's 8 KiB stack. It held, besides, twice its
			// largest Initial, where it was decrypted: 107.5 KiB for one
			// Initial of 24,000 bytes, where this allows 76.7.
			if limit := int64(held+held+held/4) + 24<<10; heap+stack > limit {
				t.Errorf("a flow waiting at the gate with %d B of datagrams holds %d B, want %d B at most", held, heap+stack, limit)
			}
		})
	}
}

// checkIncomplete checks that datagrams make an incomplete ClientHello
// the Assembler reads without an error.
func checkIncomplete(t *testing.T, datagrams [][]byte) {
	t.Helper()
	var a quic.Assembler
	for i, d := range datagrams {
		if _, done, err := a.Add(d); err != nil || done {
			t.Fatalf("datagram %d: done %v, %v; want an incomplete ClientHello", i, done, err)
		}
	}
}

// measureGateFlows starts n flows of one client, each sent datagrams, and
// returns what each grew the heap and the goroutine stacks by once they all
// wait at the gate.
func measureGateFlows(t *testing.T, datagrams [][]byte, n int) (heap, stack int64) {
	t.Helper()
	defer func(w time.Duration) { quicGateWait = w }(quicGateWait)
	quicGateWait = time.Minute
	p, _, _ := udpProxy(t, quicPolicy, func(c *Config) { c.UDPIdleTimeout = time.Minute })
	dst := newUDPSink(t, false)
	clients := make([]*fakeUDPClient, n)
	for i := range clients {
		c := newFakeUDPClient(netip.AddrPortFrom(quicClient.Addr(), uint16(20000+i)), dst.addr())
		c.outBufs = nil // 4 MiB for datagrams to the client, which a gated flow never writes
		for _, d := range datagrams {
			c.inject(d) // the test's bytes, not copied: the flow's copies are what grows
		}
		clients[i] = c
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
		waitGated(t, p, 0)
	}()
	heap0, stack0 := settledMemory()
	for _, c := range clients {
		go p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: c.client, Dest: c.dest}, c)
	}
	waitGated(t, p, n)
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		waiting := 0
		for _, c := range clients {
			c.mu.Lock()
			if c.starved && c.notify != nil {
				waiting++ // read all it was sent and asked to be told of more
			}
			c.mu.Unlock()
		}
		if waiting == n {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d of %d flows wait at the gate", waiting, n)
		}
	}
	heap1, stack1 := settledMemory()
	runtime.KeepAlive(clients)
	return (heap1 - heap0) / int64(n), (stack1 - stack0) / int64(n)
}

// waitGated waits until p counts n flows at the gate.
func waitGated(t *testing.T, p *Proxy, n int) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); p.stats.quicGated.Load() != int64(n); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d flows at the gate, want %d", p.stats.quicGated.Load(), n)
		}
	}
}

// settledMemory is the heap in use and the goroutine stacks after two
// collections (the second empties the pools' victim caches).
func settledMemory() (heap, stack int64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc), int64(m.StackInuse)
}
