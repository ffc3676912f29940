package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// These tests relay allowed echo for real: a client stack behind a GWLB
// simulator on loopback pings through a netstack server whose handler is
// the Proxy, which pings 127.0.0.x from host ping sockets.

// echoRigClient and echoRigOther are two clients behind the simulator
// (two addresses of one client stack).
var (
	echoRigClient = netip.MustParseAddr("198.18.0.5")
	echoRigOther  = netip.MustParseAddr("198.18.0.6")
)

type echoReply struct {
	from    netip.Addr
	id, seq uint16
	data    string
}

type echoRig struct {
	p      *Proxy
	srv    *netstack.Server
	client *gwlbsim.ClientStack
	sink   *recordSink
	mu     sync.Mutex
	got    []echoReply
}

// newEchoRig starts the rig with the policy doc, or skips the test when
// the host allows no ping sockets.
func newEchoRig(t *testing.T, doc string, mutate func(*Config)) *echoRig {
	t.Helper()
	return newEchoRigOn(t, doc, mutate, func(h netstack.Handler) (*netstack.Server, *gwlbsim.Endpoint) {
		return simulatedEndpoint(t, h, false)
	})
}

// newEchoRigOn is newEchoRig with the netstack server and endpoint that
// endpoint starts for the Proxy.
func newEchoRigOn(t *testing.T, doc string, mutate func(*Config),
	endpoint func(netstack.Handler) (*netstack.Server, *gwlbsim.Endpoint)) *echoRig {
	t.Helper()
	if c, err := icmp.ListenPacket("udp4", "0.0.0.0"); err != nil {
		t.Skipf("no unprivileged ICMP sockets (net.ipv4.ping_group_range): %v", err)
	} else {
		c.Close()
	}
	r := &echoRig{}
	r.p, _, r.sink = echoProxy(t, doc, mutate)
	t.Cleanup(r.p.Close)
	var ep *gwlbsim.Endpoint
	r.srv, ep = endpoint(r.p)
	var err error
	if r.client, err = ep.NewClientStack(echoRigClient, echoRigOther); err != nil {
		t.Fatal(err)
	}
	r.client.SetTap(func(inner []byte) bool {
		if len(inner) < 28 || inner[9] != 1 || inner[20] != 0 { // not an ICMP echo reply
			return false
		}
		src, _ := netip.AddrFromSlice(inner[12:16])
		r.mu.Lock()
		r.got = append(r.got, echoReply{src, binary.BigEndian.Uint16(inner[24:]), binary.BigEndian.Uint16(inner[26:]), string(inner[28:])})
		r.mu.Unlock()
		return true
	})
	return r
}

// ping sends an echo request from src, a client, to dst.
func (r *echoRig) ping(t *testing.T, src, dst netip.Addr, id, seq uint16, data string) {
	t.Helper()
	pkt := make([]byte, 28+len(data))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	s4, d4 := src.As4(), dst.As4()
	copy(pkt[12:16], s4[:])
	copy(pkt[16:20], d4[:])
	binary.BigEndian.PutUint16(pkt[10:], inetChecksum(pkt[:20]))
	pkt[20] = 8
	binary.BigEndian.PutUint16(pkt[24:], id)
	binary.BigEndian.PutUint16(pkt[26:], seq)
	copy(pkt[28:], data)
	binary.BigEndian.PutUint16(pkt[22:], inetChecksum(pkt[20:]))
	if err := r.client.Send(pkt); err != nil {
		t.Fatal(err)
	}
}

func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// replies returns the echo replies the client has seen, once there are at
// least n or a few seconds have passed.
func (r *echoRig) replies(n int) []echoReply {
	deadline := time.Now().Add(3 * time.Second)
	for {
		r.mu.Lock()
		got := append([]echoReply(nil), r.got...)
		r.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// record waits for the icmp record to dst.
func (r *echoRig) record(t *testing.T, dst netip.Addr) records.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, rec := range r.sink.parse(t) {
			if rec.Kind == "icmp" && rec.DestIP == dst.String() {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no icmp record to %s", dst)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEchoRelayEmptyReply: a ping without data (ping -s 0) is answered
// with a reply without data, and its flow's record is ok, not timeout: a
// reply of any size is a reply.
func TestEchoRelayEmptyReply(t *testing.T) {
	r := newEchoRig(t, "policy: {default: allow}\n", func(c *Config) { c.EchoIdleTimeout = 300 * time.Millisecond })
	dst := netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, dst, 4242, 1, "")
	if got := r.replies(1); len(got) != 1 || got[0] != (echoReply{dst, 4242, 1, ""}) {
		t.Fatalf("replies %+v, want one empty reply from %s", got, dst)
	}
	rec := r.record(t, dst)
	if rec.Action != "allow" || rec.Rule != "default" || rec.Result != "ok" || rec.Packets != 1 || rec.BytesIn != 0 {
		t.Fatalf("record %+v, want an ok allow of one request", rec)
	}
}

// TestEchoRelayLargeReply: the reply buffer holds the largest reply the
// inner MTU lets through, whole.
func TestEchoRelayLargeReply(t *testing.T) {
	r := newEchoRig(t, "policy: {default: allow}\n", nil)
	dst := netip.MustParseAddr("127.0.0.2")
	data := strings.Repeat("0123456789", (netstack.DefaultMTU-28)/10)
	r.ping(t, echoRigClient, dst, 4242, 1, data)
	if got := r.replies(1); len(got) != 1 || got[0] != (echoReply{dst, 4242, 1, data}) {
		t.Fatalf("%d replies, want one of %d bytes", len(got), len(data))
	}
}

// TestEchoSockCause: the warning for a ping socket that cannot be opened
// names what went wrong, as icmp.ListenPacket reports it.
func TestEchoSockCause(t *testing.T) {
	for errno, want := range map[syscall.Errno]int{
		syscall.EACCES: echoSockDenied, syscall.EMFILE: echoSockNoFDs, syscall.ENFILE: echoSockNoFDs,
		syscall.EADDRINUSE: echoSockNoIdents, syscall.EAFNOSUPPORT: echoSockOther,
	} {
		err := &net.OpError{Op: "listen", Net: "udp4", Err: os.NewSyscallError("socket", errno)}
		if got := echoSockCauseOf(err); got != want {
			t.Errorf("%v: cause %q, want %q", errno, echoSockWhy[got], echoSockWhy[want])
		}
	}
}

// TestEchoRelayForeignReplyDropped plays a host that forges an echo reply
// to the appliance's address, carrying the ident of the ping socket of a
// flow to 127.0.0.2, from 127.0.0.3: the kernel hands it to that socket,
// and the relay must not pass it to the client as the destination's.
func TestEchoRelayForeignReplyDropped(t *testing.T) {
	testenv.RequireRoot(t, "forging an echo reply takes a raw socket")
	r := newEchoRig(t, "policy: {default: allow}\n", nil)
	raw, err := net.ListenPacket("ip4:icmp", "127.0.0.3")
	if err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("raw ICMP socket: %v", err))
	}
	defer raw.Close()
	dst := netip.MustParseAddr("127.0.0.2")
	r.ping(t, echoRigClient, dst, 4242, 1, "ping!")
	if got := r.replies(1); len(got) != 1 {
		t.Fatalf("replies %+v, want the destination's one", got)
	}
	r.p.echo.mu.Lock()
	var ident int
	for k, f := range r.p.echo.flows {
		if k.dest == dst && f.conn != nil {
			ident = f.conn.LocalAddr().(*net.UDPAddr).Port
		}
	}
	r.p.echo.mu.Unlock()
	forged, err := (&icmp.Message{Type: ipv4.ICMPTypeEchoReply, Body: &icmp.Echo{ID: ident, Seq: 77, Data: []byte("forged")}}).Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.WriteTo(forged, &net.IPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	// The forged reply is on the socket before the next real one, which
	// is read after it: once that has reached the client, so would have
	// the forged one.
	deadline := time.Now().Add(3 * time.Second)
	for r.p.Stats().EchoForeignReplies == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	r.ping(t, echoRigClient, dst, 4242, 2, "ping!")
	got := r.replies(2)
	for _, rp := range got {
		if rp.seq == 77 || rp.data == "forged" {
			t.Fatalf("the client got the forged reply as the destination's: %+v", got)
		}
	}
	if len(got) != 2 || got[1] != (echoReply{dst, 4242, 2, "ping!"}) {
		t.Fatalf("replies %+v, want the destination's two", got)
	}
	if n := r.p.Stats().EchoForeignReplies; n != 1 {
		t.Fatalf("echo_foreign_replies %d, want 1", n)
	}
}

// TestEchoRelayShare plays a client that sweeps echo IDs: each is a flow
// with a host ping socket, a goroutine and a buffer, so one client may hold
// only its share of them. Requests of further flows are dropped and
// counted, with one record; another client still gets its pings through,
// and the client gets new flows again once its old ones have ended.
func TestEchoRelayShare(t *testing.T) {
	const share = 4
	r := newEchoRig(t, "policy: {default: allow}\n", func(c *Config) {
		c.MaxEchoFlowsPerClient = share
		c.EchoIdleTimeout = 500 * time.Millisecond
	})
	dst := netip.MustParseAddr("127.0.0.2")
	for id := uint16(1); id <= share+3; id++ {
		r.ping(t, echoRigClient, dst, id, 1, "ping!")
	}
	r.ping(t, echoRigOther, dst, 1, 1, "other")
	r.replies(share + 1)
	time.Sleep(100 * time.Millisecond) // for replies beyond the share to show, if any
	got := r.replies(0)
	ids := map[uint16]bool{}
	for _, rp := range got {
		if rp.data == "ping!" {
			ids[rp.id] = true
		}
	}
	if len(ids) != share || len(got) != share+1 {
		t.Fatalf("replies %+v: want %d of the sweeping client's flows answered, and the other client's ping", got, share)
	}
	st := r.p.Stats()
	if st.EchoShareDrops != 3 || st.EchoActive != share+1 {
		t.Fatalf("echo_share_drops %d, echo_active %d; want 3 and %d", st.EchoShareDrops, st.EchoActive, share+1)
	}
	var shareRecs []records.Record
	for _, rec := range r.sink.parse(t) {
		if rec.Action == "deny" {
			shareRecs = append(shareRecs, rec)
		}
	}
	if len(shareRecs) != 1 || shareRecs[0].Rule != "" || shareRecs[0].Kind != "icmp" ||
		!strings.Contains(shareRecs[0].Error, "ICMP echo flows, its share") {
		t.Fatalf("share records %+v, want one deny for the client at its share", shareRecs)
	}

	// Once the flows have idled out, the share is free again.
	deadline := time.Now().Add(5 * time.Second)
	for r.p.Stats().EchoActive != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("echo_active %d after the idle timeout", r.p.Stats().EchoActive)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.ping(t, echoRigClient, dst, 100, 1, "again")
	if got := r.replies(len(got) + 1); got[len(got)-1] != (echoReply{dst, 100, 1, "again"}) {
		t.Fatalf("replies %+v: a new flow after the old ones ended was not relayed", got)
	}
}

// echoUnansweredHelperEnv runs TestEchoRelayUnansweredHelper, in the
// network namespace TestEchoRelayUnansweredEndsSooner made for it.
const echoUnansweredHelperEnv = "GWLBPROXY_ECHO_UNANSWERED_HELPER"

// TestEchoRelayUnansweredEndsSooner: an echo flow its destination never
// answers holds its host socket, goroutine and buffer only for the
// unanswered timeout, as a UDP flow does, not for the whole idle timeout:
// the packet stack forgets such a flow by then, and a client sweeping echo
// IDs at an address that drops them would otherwise hold each for minutes.
// The destination that does not answer is loopback in a namespace of the
// test's own, with echo ignored there.
func TestEchoRelayUnansweredEndsSooner(t *testing.T) {
	testenv.RequireRoot(t, "a destination that ignores echo is made in a network namespace: that needs root")
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("`ip netns list` fails (iproute2 needed): %v %s", err, bytes.TrimSpace(out)))
	}
	ns := fmt.Sprintf("gwlbt-echo-%08x", rand.Uint32())
	runIP(t, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v %s", ns, err, out)
		}
	})
	runIP(t, "-n", ns, "link", "set", "lo", "up")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestEchoRelayUnansweredHelper$", "-test.count", "1", "-test.v")
	cmd.Env = append(os.Environ(), echoUnansweredHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestEchoRelayUnansweredHelper")) {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

// TestEchoRelayUnansweredHelper is the namespace's side of
// TestEchoRelayUnansweredEndsSooner.
func TestEchoRelayUnansweredHelper(t *testing.T) {
	if os.Getenv(echoUnansweredHelperEnv) == "" {
		t.Skip("run by TestEchoRelayUnansweredEndsSooner")
	}
	// This namespace's own settings: ping sockets for everyone, and no
	// answer to echo.
	for file, v := range map[string]string{"ping_group_range": "0 2147483647", "icmp_echo_ignore_all": "1"} {
		if err := os.WriteFile("/proc/sys/net/ipv4/"+file, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const unanswered = 300 * time.Millisecond
	r := newEchoRig(t, "policy: {default: allow}\n", func(c *Config) {
		c.EchoIdleTimeout = time.Minute
		c.UDPUnansweredTimeout = unanswered
	})
	dst := netip.MustParseAddr("127.0.0.2")
	start := time.Now()
	r.ping(t, echoRigClient, dst, 4242, 1, "ping!")
	rec := r.record(t, dst)
	if took := time.Since(start); took > 10*unanswered {
		t.Fatalf("the unanswered flow ended after %s, want about %s", took, unanswered)
	}
	if rec.Result != "timeout" || rec.Packets != 1 || r.p.Stats().EchoActive != 0 {
		t.Fatalf("record %+v, echo_active %d: want a timeout of one request, nothing active", rec, r.p.Stats().EchoActive)
	}
}

// TestEchoRelayCloseEndsFlows plays the appliance's drain: a client has
// been pinging, then the packet stack and the proxy close. The echo flow's
// ping socket is the host's, which closing the stack does not touch, and
// the flow would idle out only 120 s after its last request: Proxy.Close
// must end it at once, its record written and its goroutine gone (a serve
// loop retrying its closed socket would keep it active, spinning, until
// then). An echo flow that arrives after Close is dropped, not relayed.
func TestEchoRelayCloseEndsFlows(t *testing.T) {
	r := newEchoRig(t, "policy: {default: allow}\n", nil) // default idle timeouts
	dst := netip.MustParseAddr("127.0.0.2")
	for seq := uint16(1); seq <= 3; seq++ {
		r.ping(t, echoRigClient, dst, 4242, seq, "x")
		if got := r.replies(int(seq)); len(got) != int(seq) {
			t.Fatalf("replies %+v, want %d", got, seq)
		}
	}
	start := time.Now()
	r.p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := r.p.Wait(ctx); err != nil {
		t.Fatalf("Wait after Close: %v; %d echo flows still active", err, r.p.Stats().EchoActive)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the echo flow ended %s after Close, want at once", took)
	}
	rec := r.record(t, dst)
	if rec.Action != "allow" || rec.Result != "ok" || rec.Packets != 3 || rec.BytesOut != 3 || rec.BytesIn != 3 {
		t.Fatalf("record %+v, want an ok allow of three requests, each answered", rec)
	}

	// The stack still runs here (the appliance closes it first): a new
	// flow reaches the closed proxy, which must not open a socket for it.
	r.ping(t, echoRigClient, dst, 4343, 1, "late")
	time.Sleep(300 * time.Millisecond)
	r.mu.Lock()
	got := append([]echoReply(nil), r.got...)
	r.mu.Unlock()
	if len(got) != 3 || r.p.Active() != 0 {
		t.Fatalf("after Close: replies %+v, %d flows active; want the new flow dropped", got, r.p.Active())
	}
}
