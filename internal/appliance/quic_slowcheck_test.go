package appliance

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff/quic"
)

// The tests here hold a QUIC flow in its destination check (policy
// destination_check: dns) for as long as they like: the rig's resolver
// keeps its answers back until the test releases them (destchecktest's
// Hold), as a resolver that is slow, or a name's authoritative servers
// that a client controls, would.

const slowCheckQUICPolicy = `
policy:
  default: deny
  destination_check: dns
  rules:
    - name: web
      domains: ["slow.example.test"]
      protocols: [quic]
      action: allow
`

// quicClientFlight returns the datagrams of a real QUIC client's first
// flight for name, up to the one that completes its ClientHello: quic-go
// dials a loopback socket that never answers, which collects them.
func quicClientFlight(t *testing.T, name string) [][]byte {
	t.Helper()
	loopback := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	sink := must(net.ListenUDP("udp4", loopback))(t)
	defer sink.Close()
	client := must(net.ListenUDP("udp4", loopback))(t)
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dialed := make(chan error, 1)
	go func() {
		_, err := quicgo.Dial(ctx, client, sink.LocalAddr(), &tls.Config{ServerName: name, NextProtos: []string{"h3"}}, &quicgo.Config{})
		dialed <- err
	}()
	defer func() {
		cancel()
		<-dialed
	}()
	var asm quic.Assembler
	var flight [][]byte
	buf := make([]byte, 65536)
	_ = sink.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := sink.Read(buf)
		if err != nil {
			t.Fatalf("reading quic-go's first flight: %v (after %d datagrams)", err, len(flight))
		}
		d := bytes.Clone(buf[:n])
		flight = append(flight, d)
		if _, done, err := asm.Add(d); err != nil {
			t.Fatal(err)
		} else if done {
			return flight
		}
	}
}

// innerUDP4 builds an inner IPv4 UDP datagram (UDP checksum 0: none), as
// a client would send it.
func innerUDP4(src, dst netip.AddrPort, payload []byte) []byte {
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = 17
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(pkt[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(pkt[20:], src.Port())
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
	copy(pkt[28:], payload)
	return pkt
}

func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestQUICSlowCheckZeroLengthFloodHeldBounded: a client floods its QUIC
// flow with zero-length datagrams while the flow's destination check
// waits on the resolver; the appliance holds a bounded number of them,
// not one more for every datagram (about 700 B of heap each before: the
// stack queued them unread, and counts a queued datagram by its payload
// bytes, so zero-length ones were never refused).
func TestQUICSlowCheckZeroLengthFloodHeldBounded(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	must(0, os.WriteFile(cfg, []byte(slowCheckQUICPolicy), 0o644))(t)
	// The lookup is held unanswered while the flood runs, which takes
	// 5 s and more on a loaded machine under the race detector, past the
	// default 3 s bound: its end would release the flow's datagrams
	// before the heap is read. The check waits for it at most the dial
	// timeout (checkDestination), the rig's 3 s, which ended the check
	// first ("gave up waiting for the lookup" after 17 s of a flood at
	// load 6 to 9): both are raised.
	const lookupTimeout = 30 * time.Second
	r := newRig(t, func(o *Options) {
		o.Config = cfg
		o.dnsLookupTimeout = lookupTimeout
		o.DialTimeout = lookupTimeout
	}, nil)
	dst := serveUDP(t, netip.AddrPortFrom(r.net.server(5), 0), func([]byte) []byte { return nil })
	r.dns.Set("slow.example.test", 60, dst.Addr())
	release := r.dns.Hold()
	defer release()

	flight := quicClientFlight(t, "slow.example.test")
	src := netip.AddrPortFrom(clientV4, 40000)
	for _, d := range flight {
		must(0, r.ep.Send(innerUDP4(src, dst, d)))(t)
	}
	waitFor(t, "the destination check's lookup", func() string {
		if r.dns.Queries("slow.example.test") == 0 {
			return "no query yet"
		}
		return ""
	})
	checkBegan := time.Now()

	in0 := r.stats().Netstack.PacketsIn
	empty := innerUDP4(src, dst, nil)
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = empty
	}
	sent := 0
	// The lookup times out after lookupTimeout, and the heap must be
	// read before: the flood is a number of datagrams the
	// appliance takes in at its own pace (under the race detector about
	// 9,000 a second here), not a loop against the clock.
	// Fewer are enough to measure under the detector: 1,000 more at
	// ~700 B each held were ~700 KiB, against the 256 KiB bound.
	minTaken := uint64(4000)
	if raceEnabled {
		minTaken = 1000
	}
	// flood sends until the appliance has taken in n more datagrams,
	// keeping no more than a socket buffer's worth ahead of it, so that
	// a slow appliance is paced rather than its socket overrun; at most
	// 64 times n are sent.
	flood := func(n uint64) {
		start := r.stats().Netstack.PacketsIn
		for sentHere := 0; sentHere < 64*int(n); {
			in := r.stats().Netstack.PacketsIn - start
			if in >= n {
				return
			}
			if uint64(sentHere) > in+256 {
				time.Sleep(time.Millisecond)
				continue
			}
			if _, err := r.ep.SendBatch(batch); err != nil {
				t.Fatal(err)
			}
			sent += len(batch)
			sentHere += len(batch)
		}
	}
	// heap reads the live heap once the appliance has dealt with every
	// datagram it took in, each held (the flow holds quic.MaxDatagrams at
	// most) or dropped, and takes in no more: a datagram it works on
	// while the collector runs counts as live, bound or no bound. Before,
	// nothing read the flow while its check waited, and this never held.
	heap := func() (int64, uint64) {
		t.Helper()
		var prev uint64
		for i := range 1000 { // 10 s: a loaded machine takes seconds
			st := r.stats()
			in := st.Netstack.PacketsIn - in0
			dealt := st.Proxy.UDPCheckDrops + min(in, quic.MaxDatagrams)
			if dealt >= in && in == prev && i > 0 {
				break
			}
			if i == 999 {
				t.Errorf("the appliance left %d of the %d datagrams it took in unread", in-dealt, in)
			}
			prev = in
			time.Sleep(10 * time.Millisecond)
		}
		return liveHeap(), prev
	}
	// The heap is read after a first part of the flood and again after
	// the rest: what the appliance warms up (its buffers, the admin
	// connection) is in both, and what it holds for every datagram is in
	// the difference (some 14,000 at ~700 B each were ~9 MiB).
	before, _ := heap()
	flood(2000)
	mid, in1 := heap()
	flood(minTaken + 1000)
	after, in2 := heap()
	waited := time.Since(checkBegan)
	st := r.stats()
	t.Logf("sent %d zero-length datagrams, the appliance took in %d in %s: live heap %+d KiB after %d, %+d KiB for the %d after them; udp_check_drops %d",
		sent, in2, waited.Round(time.Millisecond), (mid-before)>>10, in1, (after-mid)>>10, in2-in1, st.Proxy.UDPCheckDrops)
	if recs := r.readRecords(); findQUIC(recs, "slow.example.test") != nil || waited >= lookupTimeout {
		t.Fatalf("the check ended before the heap was read (%s): nothing measured\n%s", waited, summarizeRecords(recs))
	}
	if in2-in1 < minTaken {
		t.Fatalf("the appliance took in only %d datagrams after the first part: too few to measure", in2-in1)
	}
	if grew := after - mid; grew > 256<<10 {
		t.Errorf("one QUIC flow waiting on its check made the appliance hold %d KiB more for %d more datagrams", grew>>10, in2-in1)
	}
	total := int64(1 << 20)
	if raceEnabled {
		total = 4 << 20 // the detector's own allocations while the appliance warms up
	}
	if grew := after - before; grew > total {
		t.Errorf("one QUIC flow waiting on its check made the appliance hold %d KiB", grew>>10)
	}
	if st.Proxy.UDPCheckDrops == 0 {
		t.Error("udp_check_drops 0: nothing was dropped past the bound")
	}
}

// TestQUICThroughSlowCheckCompletes: a real QUIC client's connection to an
// allowed name completes when its destination check is slow, even when
// the datagrams sent on its flow during the check are dropped past the
// bound: the ClientHello's own datagrams are kept, and sent on once the
// check passes.
func TestQUICThroughSlowCheckCompletes(t *testing.T) {
	e := newQUICE2E(t)
	release := e.r.dns.Hold()
	defer release()

	laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(clientV4.As4())}
	pc := must(gonet.DialUDP(e.r.client.Stack, &laddr, nil, ipv4.ProtocolNumber))(t)
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	type result struct {
		echo string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := quicgo.Dial(ctx, pc, net.UDPAddrFromAddrPort(e.dest),
			&tls.Config{ServerName: "www.example.test", RootCAs: e.destCAs, NextProtos: []string{"echo-test"}},
			&quicgo.Config{HandshakeIdleTimeout: 10 * time.Second})
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.CloseWithError(0, "done")
		s, err := conn.OpenStreamSync(ctx)
		if err != nil {
			done <- result{err: err}
			return
		}
		if _, err := io.WriteString(s, "through a slow check"); err != nil {
			done <- result{err: err}
			return
		}
		s.Close()
		got, err := io.ReadAll(s)
		done <- result{string(got), err}
	}()

	waitFor(t, "the destination check's lookup", func() string {
		if e.r.dns.Queries("www.example.test") == 0 {
			return "no query yet"
		}
		return ""
	})
	// Fill the flow's hold, from the client's own socket (the same
	// 5-tuple), so that what else the client sends meanwhile (its
	// retransmissions) is dropped.
	drops0 := e.r.stats().Proxy.UDPCheckDrops
	for range 200 {
		if _, err := pc.WriteTo(nil, net.UDPAddrFromAddrPort(e.dest)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "datagrams dropped past the hold's bound", func() string {
		if n := e.r.stats().Proxy.UDPCheckDrops - drops0; n < 100 {
			return fmt.Sprintf("udp_check_drops +%d", n)
		}
		return ""
	})
	if got := e.received.Load(); got != 0 {
		t.Fatalf("the QUIC server read %d datagrams before the destination check passed", got)
	}
	release()

	select {
	case res := <-done:
		if res.err != nil || res.echo != "through a slow check" {
			t.Fatalf("echo %q, %v", res.echo, res.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the QUIC connection did not complete")
	}
	recs := e.r.records(func(rs []records.Record) bool { return findQUIC(rs, "www.example.test") != nil })
	if rec := findQUIC(recs, "www.example.test"); rec.Action != "splice" || rec.DestCheck != "ok" || rec.Result != "ok" {
		t.Fatalf("record %+v", rec)
	}
}
