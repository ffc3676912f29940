package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
	"github.com/gwlbproxy/gwlbproxy/proxy/sniff/quic"
)

var (
	firstFlights   sync.Map // server name -> [][]byte
	firstFlightsMu sync.Mutex
)

// quicFirstFlight returns the datagrams a real QUIC client (quic-go) sends
// first to connect to name: its Initial packets, carrying a ClientHello
// with a post-quantum key share, which takes two datagrams.
func quicFirstFlight(tb testing.TB, name string) [][]byte {
	tb.Helper()
	firstFlightsMu.Lock()
	defer firstFlightsMu.Unlock()
	if v, ok := firstFlights.Load(name); ok {
		return v.([][]byte)
	}
	flight := quicFirstFlightWith(tb, &tls.Config{ServerName: name, NextProtos: []string{"h3"}})
	firstFlights.Store(name, flight)
	return flight
}

// quicFirstFlightWith is quicFirstFlight for a client of configuration
// cfg, uncached.
func quicFirstFlightWith(tb testing.TB, cfg *tls.Config) [][]byte {
	tb.Helper()
	sent := quicClientSent(tb, cfg, &quicgo.Config{})
	// The first flight: the datagrams up to the first one that repeats an
	// earlier ClientHello (a retransmission, which carries the same
	// CRYPTO data in a new packet).
	var flight [][]byte
	var asm quic.Assembler
	for _, d := range sent {
		flight = append(flight, d)
		if _, done, err := asm.Add(d); err != nil {
			tb.Fatalf("quic-go's datagram %d: %v", len(flight), err)
		} else if done {
			break
		}
	}
	if len(flight) == 0 {
		tb.Fatal("quic-go sent nothing")
	}
	return flight
}

// quicClientSent returns the datagrams a quic-go client of configurations
// cfg and qcfg sends within 300 ms to a server that never answers: its
// first flight, and retransmissions.
func quicClientSent(tb testing.TB, cfg *tls.Config, qcfg *quicgo.Config) [][]byte {
	tb.Helper()
	// The client sends to a loopback socket that never answers.
	loopback := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	sink, err := net.ListenUDP("udp4", loopback)
	if err != nil {
		tb.Fatal(err)
	}
	defer sink.Close()
	client, err := net.ListenUDP("udp4", loopback)
	if err != nil {
		tb.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dialed := make(chan error, 1)
	go func() {
		_, err := quicgo.Dial(ctx, client, sink.LocalAddr(), cfg, qcfg)
		dialed <- err
	}()
	var sent [][]byte
	buf := make([]byte, 65536)
	_ = sink.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		n, err := sink.Read(buf)
		if err != nil {
			break
		}
		sent = append(sent, bytes.Clone(buf[:n]))
	}
	cancel()
	if err := <-dialed; err == nil {
		tb.Fatal("a QUIC handshake completed with nobody")
	}
	return sent
}

// udpSink is a destination that counts and keeps what reaches it.
type udpSink struct {
	pc   *net.UDPConn
	mu   sync.Mutex
	got  [][]byte
	from []netip.AddrPort
}

func newUDPSink(t *testing.T, echo bool) *udpSink {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &udpSink{pc: pc}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, bytes.Clone(buf[:n]))
			s.from = append(s.from, from)
			s.mu.Unlock()
			if echo {
				pc.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	return s
}

func (s *udpSink) addr() netip.AddrPort { return s.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *udpSink) received() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got...)
}

// udpProxy is a Proxy under a policy, on loopback, with its records.
func udpProxy(t *testing.T, doc string, mutate func(*Config)) (*Proxy, *policy.Holder, *recordSink) {
	t.Helper()
	sink := &recordSink{}
	h := new(policy.Holder)
	h.Store(mustPolicy(t, doc))
	cfg := Config{AllowLoopback: true, Records: records.NewWriter(nil, sink), Policy: h, UDPIdleTimeout: time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	p := New(cfg)
	t.Cleanup(p.Close)
	return p, h, sink
}

// startFlow hands a fake client's flow to p with its first datagrams queued,
// as the stack does, and returns the client and a channel closed when
// HandleUDP has returned.
func startFlow(p *Proxy, client, dest netip.AddrPort, first ...[]byte) (*fakeUDPClient, chan struct{}) {
	c := newFakeUDPClient(client, dest)
	for _, d := range first {
		c.inject(d)
	}
	done := make(chan struct{})
	go func() {
		p.HandleUDP(netstack.FlowInfo{Endpoint: 7, Client: client, Dest: dest}, c)
		close(done)
	}()
	return c, done
}

const quicPolicy = `
policy:
  default: allow
  rules:
    - name: no-blocked
      domains: ["blocked.example.test"]
      action: deny
    - name: inspect
      domains: ["inspect.example.test"]
      action: bump
`

var quicClient = netip.MustParseAddrPort("198.18.0.5:40000")

// TestQUICDeniedByName: a QUIC flow to a denied name never reaches its
// destination, not even its first datagram; it gets one record of kind
// quic, with the name, however often the client retransmits. Before the
// QUIC gate, QUIC was plain UDP: domain rules never saw it, and this
// flow reached the destination.
func TestQUICDeniedByName(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	flight := quicFirstFlight(t, "blocked.example.test")
	c, _ := startFlow(p, quicClient, dst.addr(), flight...)
	got := recs.records(t, 1)[0]
	if got.Kind != "quic" || got.Action != "deny" || got.Rule != "no-blocked" || got.SNI != "blocked.example.test" || got.ALPN != "h3" || got.Result != "denied" {
		t.Fatalf("record %+v", got)
	}
	for range 3 { // retransmissions
		for _, d := range flight {
			c.inject(d)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams of a denied QUIC flow", n)
	}
	if n := len(recs.parse(t)); n != 1 {
		t.Fatalf("%d records for one denied flow, want 1", n)
	}
	if c.isClosed() {
		t.Fatal("the denied flow was closed at once: each retransmission would be a new flow and a new record")
	}
}

// TestQUICBumpBlocked: QUIC cannot be bumped; a bump decision blocks it
// (the client falls back to TLS over TCP) and the record says why.
func TestQUICBumpBlocked(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	startFlow(p, quicClient, dst.addr(), quicFirstFlight(t, "inspect.example.test")...)
	got := recs.records(t, 1)[0]
	if got.Kind != "quic" || got.Action != "deny" || got.Rule != "inspect" || !strings.Contains(got.Error, "cannot be bumped") {
		t.Fatalf("record %+v", got)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams of a blocked QUIC flow", n)
	}
}

// TestQUICECHDenied: under ech: deny, a QUIC flow whose ClientHello offers
// ECH is refused as a TLS one is: its SNI is only the cover name of a
// client-facing server, so no rule and no destination check can say where
// it goes. Here the cover name (public.example) is allowed by the default;
// the flow must still reach nothing, and its record says why, naming no
// rule. Without ECH the same policy lets a QUIC flow through.
func TestQUICECHDenied(t *testing.T) {
	const doc = "policy: {default: allow, ech: deny}\n"
	p, _, recs := udpProxy(t, doc, nil)
	dst := newUDPSink(t, false)
	startFlow(p, quicClient, dst.addr(), quicFirstFlightWith(t, &tls.Config{ServerName: "secret.example",
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h3"}, EncryptedClientHelloConfigList: clsECHConfigList(t, "public.example")})...)
	got := recs.records(t, 1)[0]
	if got.Kind != "quic" || got.Action != "deny" || got.Rule != "" || got.Policy == "" || !got.ECH ||
		got.SNI != "public.example" || got.Error != "ClientHello offers ECH; policy ech: deny" {
		t.Fatalf("record %+v, want a quic deny for ECH naming no rule", got)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(dst.received()); n != 0 {
		t.Fatalf("the destination received %d datagrams of a QUIC flow offering ECH", n)
	}

	p, _, recs = udpProxy(t, doc, nil)
	startFlow(p, quicClient, dst.addr(), quicFirstFlight(t, "public.example")...)
	if got := recs.records(t, 1)[0]; got.Kind != "quic" || got.Action != "splice" || got.ECH {
		t.Fatalf("without ECH: record %+v, want a quic splice", got)
	}
}

// TestQUICAllowedInOrder: an allowed QUIC flow's held datagrams reach the
// destination in order, then the flow is relayed both ways; its record
// (kind quic, action splice) counts every byte.
func TestQUICAllowedInOrder(t *testing.T) {
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, true)
	flight := quicFirstFlight(t, "www.example.test")
	c, _ := startFlow(p, quicClient, dst.addr(), flight...)
	for i := range flight {
		select {
		case d := <-c.out:
			if !bytes.Equal(d, flight[i]) {
				t.Fatalf("echo %d differs from the client's datagram %d", i, i)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("echo %d of %d did not come", i+1, len(flight))
		}
	}
	c.inject([]byte("after the decision"))
	select {
	case <-c.out:
	case <-time.After(3 * time.Second):
		t.Fatal("no echo after the decision")
	}
	got := dst.received()
	if len(got) != len(flight)+1 {
		t.Fatalf("the destination received %d datagrams, want %d", len(got), len(flight)+1)
	}
	for i := range flight {
		if !bytes.Equal(got[i], flight[i]) {
			t.Fatalf("datagram %d arrived out of order or changed", i)
		}
	}
	<-c.ended // idle after a second
	rec := recs.records(t, 1)[0]
	size := int64(len("after the decision"))
	for _, d := range flight {
		size += int64(len(d))
	}
	if rec.Kind != "quic" || rec.Action != "splice" || rec.Rule != "default" || rec.SNI != "www.example.test" || rec.ALPN != "h3" ||
		rec.BytesOut != size || rec.BytesIn != size || rec.Result != "ok" {
		t.Fatalf("record %+v, want %d bytes each way", rec, size)
	}
}

// corrupt returns d with a byte of its protected payload changed: the
// Initial no longer decrypts.
func corrupt(d []byte) []byte {
	d = bytes.Clone(d)
	d[len(d)-20] ^= 0xff
	return d
}

// TestQUICUnreadable: an Initial whose ClientHello cannot be read is denied
// when the policy decides anything on names (relaying it would let it past
// those rules), and decided as udp when it does not: relayed when allowed,
// refused when a rule denies udp there.
func TestQUICUnreadable(t *testing.T) {
	flight := quicFirstFlight(t, "blocked.example.test")
	bad := corrupt(flight[0])
	if !quic.IsInitial(bad) {
		t.Fatal("the corrupted datagram no longer looks like an Initial")
	}
	t.Run("names matter", func(t *testing.T) {
		p, _, recs := udpProxy(t, quicPolicy, nil)
		dst := newUDPSink(t, false)
		startFlow(p, quicClient, dst.addr(), bad)
		got := recs.records(t, 1)[0]
		if got.Kind != "quic" || got.Action != "deny" || got.Rule != "" || !strings.Contains(got.Error, "could not be read") {
			t.Fatalf("record %+v", got)
		}
		time.Sleep(100 * time.Millisecond)
		if n := len(dst.received()); n != 0 {
			t.Fatalf("the destination received %d datagrams", n)
		}
	})
	// Relayed as udp means decided as udp: a rule on addresses that denies
	// udp there still refuses it, and nothing reaches the destination.
	t.Run("addresses only, denied", func(t *testing.T) {
		p, _, recs := udpProxy(t, "policy:\n  default: allow\n  rules:\n    - {name: no-udp, protocols: [udp], dest_cidrs: [\"127.0.0.0/8\"], action: deny}\n", nil)
		dst := newUDPSink(t, false)
		startFlow(p, quicClient, dst.addr(), bad)
		got := recs.records(t, 1)[0]
		if got.Kind != "udp" || got.Action != "deny" || got.Rule != "no-udp" || got.Result != "denied" {
			t.Fatalf("record %+v, want a udp deny by no-udp", got)
		}
		time.Sleep(100 * time.Millisecond)
		if n := len(dst.received()); n != 0 {
			t.Fatalf("the destination received %d datagrams of a denied flow", n)
		}
	})
	t.Run("addresses only", func(t *testing.T) {
		p, _, recs := udpProxy(t, "policy: {default: allow}\n", nil)
		dst := newUDPSink(t, false)
		c, _ := startFlow(p, quicClient, dst.addr(), bad)
		<-c.ended
		got := recs.records(t, 1)[0]
		if got.Kind != "udp" || got.Action != "allow" || got.Result != "ok" || !strings.Contains(got.Error, "relayed as udp") {
			t.Fatalf("record %+v", got)
		}
		if r := dst.received(); len(r) != 1 || !bytes.Equal(r[0], bad) {
			t.Fatalf("the destination received %d datagrams, want the one", len(r))
		}
	})
}

// TestQUICGateBounded: a ClientHello that never completes holds the flow
// for quicGateWait at most, and is then refused under a policy with names.
func TestQUICGateBounded(t *testing.T) {
	flight := quicFirstFlight(t, "www.example.test")
	if len(flight) < 2 {
		t.Skip("quic-go's ClientHello fits one datagram here: nothing to hold back")
	}
	defer func(w time.Duration) { quicGateWait = w }(quicGateWait)
	quicGateWait = 300 * time.Millisecond
	p, _, recs := udpProxy(t, quicPolicy, nil)
	dst := newUDPSink(t, false)
	start := time.Now()
	startFlow(p, quicClient, dst.addr(), flight[0]) // the rest never comes
	got := recs.records(t, 1)[0]
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the gate held the flow %s", took)
	}
	if got.Kind != "quic" || got.Action != "deny" || !strings.Contains(got.Error, "within") {
		t.Fatalf("record %+v", got)
	}
}

// TestQUICDestinationCheck: an allowed name must resolve to the
// destination (destination_check: dns, the default), or the flow is
// refused; in audit mode the mismatch is only recorded.
func TestQUICDestinationCheck(t *testing.T) {
	const doc = `
policy:
  mode: %s
  default: deny
  rules:
    - name: web
      domains: ["www.example.test"]
      action: allow
`
	check := func(_ context.Context, endpoint, name string, dest netip.Addr) error {
		if endpoint != "vpce-00000000000000007" || name != "www.example.test" {
			return errors.New("unexpected question")
		}
		return errors.New("NXDOMAIN")
	}
	flight := quicFirstFlight(t, "www.example.test")
	for _, mode := range []string{"enforce", "audit"} {
		t.Run(mode, func(t *testing.T) {
			p, _, recs := udpProxy(t, strings.Replace(doc, "%s", mode, 1), func(c *Config) { c.DestinationCheck = check })
			dst := newUDPSink(t, false)
			c, _ := startFlow(p, quicClient, dst.addr(), flight...)
			if mode == "audit" {
				<-c.ended
			}
			got := recs.records(t, 1)[0]
			if got.Kind != "quic" || got.DestCheck != "mismatch" || got.Rule != "web" {
				t.Fatalf("record %+v", got)
			}
			switch mode {
			case "enforce":
				if got.Action != "deny" {
					t.Fatalf("action %s, want deny", got.Action)
				}
			case "audit":
				if got.Action != "splice" || len(dst.received()) != len(flight) {
					t.Fatalf("action %s, %d datagrams relayed", got.Action, len(dst.received()))
				}
			}
		})
	}
}
