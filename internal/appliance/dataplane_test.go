package appliance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

func echoServer(c net.Conn) { io.Copy(c, c) }

// TestTCPEchoAndRecord: bytes go both ways, the record names the flow with
// the GENEVE fields the simulator sent, and replies carried its header.
func TestTCPEchoAndRecord(t *testing.T) {
	for _, mode := range []string{netstack.ReturnPathBound, netstack.ReturnPathRaw} {
		t.Run(mode, func(t *testing.T) {
			if mode == netstack.ReturnPathRaw && !canRaw() {
				testenv.RequirePrivileged(t, "the raw return path needs CAP_NET_RAW; run as root to cover it")
			}
			r := newRig(t, func(o *Options) { o.ReturnPath = mode }, nil)
			if got := r.app.netstack.ReturnPath(); got != mode {
				t.Fatalf("return path %q, want %q", got, mode)
			}
			srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
			c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
			msg := []byte("hello through the GWLB")
			must(c.Write(msg))(t)
			got := make([]byte, len(msg))
			must(io.ReadFull(c, got))(t)
			if !bytes.Equal(got, msg) {
				t.Fatalf("echo %q, want %q", got, msg)
			}
			c.CloseWrite()
			if n, err := c.Read(got); err != io.EOF {
				t.Fatalf("after half-close: read %d, %v; want EOF", n, err)
			}
			c.Close()
			recs := r.records(func(rs []records.Record) bool { return findRecord(rs, "tcp", srv) != nil })
			rec := findRecord(recs, "tcp", srv)
			if rec == nil {
				t.Fatalf("no tcp record for %s in %+v", srv, recs)
			}
			if rec.BytesOut != int64(len(msg)) || rec.BytesIn != int64(len(msg)) || rec.Result != "ok" {
				t.Errorf("record bytes_out=%d bytes_in=%d result=%q, want %d/%d/ok", rec.BytesOut, rec.BytesIn, rec.Result, len(msg), len(msg))
			}
			if rec.Endpoint != "vpce-00123456789abcdef" || rec.Attachment != "1111222233334444" || rec.ClientIP != clientV4.String() {
				t.Errorf("record names endpoint %q attachment %q client %q", rec.Endpoint, rec.Attachment, rec.ClientIP)
			}
			p := netstack.Packet{Proto: 6, Src: clientV4.As16(), Dst: srv.Addr().As16(), SrcPort: rec.ClientPort, DstPort: srv.Port()}
			hdr := r.sim.FlowHeader(p.Tuple(r.ep.ID()))
			if hdr == nil {
				t.Fatal("simulator has no header for the flow")
			}
			h, _ := netstack.ParseHeader(append(hdr, 0x45))
			if want := fmt.Sprintf("%08x", h.FlowCookie); rec.FlowCookie != want {
				t.Errorf("record flow_cookie %q, want %q", rec.FlowCookie, want)
			}
			st := r.sim.Stats()
			if st.Received == 0 || st.HeaderMismatch != 0 || st.UnknownFlow != 0 || st.WrongPort != 0 || st.TooBig != 0 {
				t.Errorf("simulator stats %+v: replies must arrive on 6081 under the flow's header, none over 8500 bytes", st)
			}
		})
	}
}

func canRaw() bool {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return false
	}
	syscall.Close(fd)
	return true
}

// TestBulkTransfer64MiB moves 64 MiB down and 64 MiB up and checks both
// arrive intact.
func TestBulkTransfer64MiB(t *testing.T) {
	const size = 64 << 20
	r := newRig(t, nil, nil)
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		var cmd [1]byte
		if _, err := io.ReadFull(c, cmd[:]); err != nil {
			return
		}
		switch cmd[0] {
		// Lowercase commands: 'D' begins "DELETE", and the appliance would
		// wait sniff.CompleteTimeout for the rest of a request line.
		case 'd': // download: send size pseudo-random bytes
			io.Copy(c, io.LimitReader(newPRNG(1), size))
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c)
		case 'u': // upload: answer with the digest of what arrived
			h := sha256.New()
			n, _ := io.Copy(h, c)
			binary.Write(c, binary.BigEndian, n)
			c.Write(h.Sum(nil))
		}
	})
	want := sha256.New()
	io.Copy(want, io.LimitReader(newPRNG(1), size))
	wantSum := want.Sum(nil)

	t.Run("download", func(t *testing.T) {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
		defer c.Close()
		c.SetDeadline(time.Now().Add(90 * time.Second))
		must(c.Write([]byte{'d'}))(t)
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil || n != size || !bytes.Equal(h.Sum(nil), wantSum) {
			t.Fatalf("downloaded %d bytes (err %v), digest match %v; want %d", n, err, bytes.Equal(h.Sum(nil), wantSum), size)
		}
	})
	t.Run("upload", func(t *testing.T) {
		c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
		defer c.Close()
		c.SetDeadline(time.Now().Add(90 * time.Second))
		must(c.Write([]byte{'u'}))(t)
		must(io.Copy(c, io.LimitReader(newPRNG(1), size)))(t)
		c.CloseWrite()
		var n int64
		if err := binary.Read(c, binary.BigEndian, &n); err != nil {
			t.Fatal(err)
		}
		sum := make([]byte, 32)
		must(io.ReadFull(c, sum))(t)
		if n != size || !bytes.Equal(sum, wantSum) {
			t.Fatalf("server received %d bytes, digest match %v; want %d", n, bytes.Equal(sum, wantSum), size)
		}
	})
	if d := r.stats().Netstack.Drops; d["reply_too_big"] != 0 || d["reply_without_flow"] != 0 {
		t.Errorf("drops on the return path: %v", d)
	}
}

// newPRNG returns a deterministic byte stream.
func newPRNG(seed uint64) io.Reader { return prngReader{rand.NewChaCha8([32]byte{byte(seed)})} }

type prngReader struct{ r *rand.ChaCha8 }

func (p prngReader) Read(b []byte) (int, error) { return p.r.Read(b) }

// TestConcurrentConnections opens 500 connections at once; all complete.
func TestConcurrentConnections(t *testing.T) {
	const conns = 500
	r := newRig(t, nil, nil)
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	ctx := ctxT(t, 60*time.Second)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := r.client.DialTCP(ctx, srv)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(45 * time.Second))
			msg := []byte(strings.Repeat("x", 100) + string(rune('a'+i%26)))
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				errs <- errors.Join(err, errors.New("echo mismatch"))
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n < 5 {
			t.Error(err)
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d of %d connections failed", n, conns)
	}
	recs := r.records(func(rs []records.Record) bool { return len(rs) >= conns })
	if len(recs) != conns {
		t.Errorf("%d records, want %d", len(recs), conns)
	}
}

// TestUDPRequestResponse relays a UDP exchange and records it once idle.
func TestUDPRequestResponse(t *testing.T) {
	r := newRig(t, func(o *Options) { o.IdleTimeout = time.Second }, nil)
	srv := serveUDP(t, netip.AddrPortFrom(r.net.server(3), 0), func(d []byte) []byte { return append([]byte("re:"), d...) })
	c := must(r.client.DialUDP(srv))(t)
	defer c.Close()
	for i := range 3 {
		msg := []byte("query " + string(rune('0'+i)))
		must(c.Write(msg))(t)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 2048)
		n := must(c.Read(buf))(t)
		if got := string(buf[:n]); got != "re:"+string(msg) {
			t.Fatalf("reply %q", got)
		}
	}
	recs := r.records(func(rs []records.Record) bool { return findRecord(rs, "udp", srv) != nil })
	rec := findRecord(recs, "udp", srv)
	if rec == nil {
		t.Fatal("no udp record after the idle timeout")
	}
	if rec.BytesOut != 3*7 || rec.BytesIn != 3*10 {
		t.Errorf("udp record bytes_out=%d bytes_in=%d, want 21/30", rec.BytesOut, rec.BytesIn)
	}
}

// TestEndpointsDoNotMix: two GWLB endpoints, clients with the same address
// and port, two servers; each client reaches its own.
func TestEndpointsDoNotMix(t *testing.T) {
	r := newRig(t, nil, nil)
	ep2 := r.sim.Endpoint(0xfedcba9876543210, 0x5555666677778888)
	client2 := must(ep2.NewClientStack(clientV4))(t)
	// Both servers listen on the same port of two addresses.
	ln := must(net.Listen("tcp", netip.AddrPortFrom(r.net.server(3), 0).String()))(t)
	port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	ln.Close()
	name := func(s string) func(net.Conn) {
		return func(c net.Conn) { io.WriteString(c, s); io.Copy(io.Discard, c) }
	}
	srvA := listenTCP(t, netip.AddrPortFrom(r.net.server(3), port), name("A"))
	srvB := listenTCP(t, netip.AddrPortFrom(r.net.server(4), port), name("B"))
	src := netip.AddrPortFrom(clientV4, 40000)
	ca := must(r.client.DialTCPFrom(ctxT(t, 5*time.Second), src, srvA))(t)
	defer ca.Close()
	cb := must(client2.DialTCPFrom(ctxT(t, 5*time.Second), src, srvB))(t)
	defer cb.Close()
	for c, want := range map[net.Conn]string{ca: "A", cb: "B"} {
		buf := make([]byte, 1)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		must(io.ReadFull(c, buf))(t)
		if string(buf) != want {
			t.Errorf("client reached server %q, want %q", buf, want)
		}
	}
	st := r.stats().Netstack
	if st.Stacks != 2 || st.FlowsByEndpoint["vpce-00123456789abcdef"] < 1 || st.FlowsByEndpoint["vpce-0fedcba9876543210"] < 1 {
		t.Errorf("stacks=%d flows by endpoint %v: want 2 stacks, flows on both", st.Stacks, st.FlowsByEndpoint)
	}
}

// TestRefusedPort: a closed port gives the client a prompt refusal and a
// record saying so.
func TestRefusedPort(t *testing.T) {
	r := newRig(t, nil, nil)
	ln := must(net.Listen("tcp", netip.AddrPortFrom(r.net.server(3), 0).String()))(t)
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	start := time.Now()
	_, err := r.client.DialTCP(ctxT(t, 10*time.Second), closed)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial to a closed port: %v, want connection refused", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusal took %v", d)
	}
	recs := r.records(func(rs []records.Record) bool { return findRecord(rs, "tcp", closed) != nil })
	if rec := findRecord(recs, "tcp", closed); rec == nil || rec.Result != "refused" {
		t.Fatalf("record %+v, want result refused", rec)
	}
}

// TestIPv6Client carries an inner IPv6 flow over IPv4 GENEVE.
func TestIPv6Client(t *testing.T) {
	r := newRig(t, nil, nil)
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback on this host: %v", err)
	}
	ln.Close()
	srv := listenTCP(t, netip.MustParseAddrPort("[::1]:0"), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	defer c.Close()
	msg := []byte("over IPv6")
	must(c.Write(msg))(t)
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	must(io.ReadFull(c, got))(t)
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %q", got)
	}
	c.Close()
	recs := r.records(func(rs []records.Record) bool { return findRecord(rs, "tcp", srv) != nil })
	if rec := findRecord(recs, "tcp", srv); rec == nil || rec.ClientIP != clientV6.String() {
		t.Fatalf("record %+v, want client %s", rec, clientV6)
	}
}

// TestUnknownOptionsEchoed: options the appliance does not know come back
// in every reply (the simulator drops replies whose header differs).
func TestUnknownOptionsEchoed(t *testing.T) {
	extra := []byte{0x01, 0x02, 0x7f, 0x01, 0xde, 0xad, 0xbe, 0xef} // class 0x0102, one word of data
	r := newRig(t, nil, func(c *gwlbsim.Config) { c.ExtraOptions = extra })
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	defer c.Close()
	must(c.Write([]byte("x")))(t)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	must(io.ReadFull(c, make([]byte, 1)))(t)
	if st := r.sim.Stats(); st.HeaderMismatch != 0 || st.Received == 0 {
		t.Fatalf("simulator stats %+v", st)
	}
}

// TestMalformedGeneve: bad datagrams are dropped under their own reason and
// the appliance keeps serving.
func TestMalformedGeneve(t *testing.T) {
	r := newRig(t, nil, nil)
	inner := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 198, 18, 0, 5, 127, 0, 0, 1}
	good := netstack.AppendHeader(nil, netstack.EtherTypeIPv4, 0, 1, 2, 3, nil)
	badVersion := append([]byte{}, good...)
	badVersion[0] |= 0x40
	badProto := append([]byte{}, good...)
	badProto[2], badProto[3] = 0x65, 0x58 // Ethernet
	missing := []byte{0, 0, 0x08, 0, 0, 0, 0, 0}
	badOptLen := append([]byte{}, good...)
	badOptLen[11] = 0x1f // endpoint option claims 31 words
	cases := map[string][]byte{
		"truncated":          good[:5],
		"bad_version":        append(badVersion, inner...),
		"bad_protocol":       append(badProto, inner...),
		"missing_aws_option": append(missing, inner...),
		"bad_option_length":  append(badOptLen, inner...),
		"inner_malformed":    append(append([]byte{}, good...), 0x45, 0, 0),
	}
	for _, b := range cases {
		if err := r.sim.SendRaw(b); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := r.stats().Netstack.Drops
		ok := true
		for reason := range cases {
			ok = ok && d[reason] == 1
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drops %v: want one of each of %v", d, mapKeys(cases))
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	c.Close()
}

func mapKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// TestDNSRecords: queries relayed to a DNS port (--dns-ports, here a
// loopback server's ephemeral port, so the test needs no privilege) each get
// a dns record with name, type and rcode; an unanswered one is recorded as
// a timeout. A flow whose queries are all answered ends a second after its
// last answer, not after the idle timeout, and gives its host port back.
func TestDNSRecords(t *testing.T) {
	const idle = 4 * time.Second
	pc := must(net.ListenPacket("udp", "127.0.0.1:0"))(t)
	defer pc.Close()
	r := newRig(t, func(o *Options) {
		o.IdleTimeout = idle
		o.DNSPorts = []uint16{uint16(pc.LocalAddr().(*net.UDPAddr).Port)}
	}, nil)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if bytes.Contains(buf[:n], []byte("silent")) {
				continue // never answered
			}
			buf[2], buf[3] = 0x81, 0x83 // a response: NXDOMAIN
			pc.WriteTo(buf[:n], from)
		}
	}()
	srv := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	query := func(id byte, name string) []byte {
		b := []byte{0, id, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
		for _, l := range strings.Split(name, ".") {
			b = append(append(b, byte(len(l))), l...)
		}
		return append(b, 0, 0, 28, 0, 1) // AAAA, IN
	}
	// One flow whose query is answered, one whose query is not.
	answered := must(r.client.DialUDP(srv))(t)
	defer answered.Close()
	silent := must(r.client.DialUDP(srv))(t)
	defer silent.Close()
	must(answered.Write(query(1, "nothere.example.test")))(t)
	answered.SetReadDeadline(time.Now().Add(3 * time.Second))
	must(answered.Read(make([]byte, 1500)))(t)
	answeredAt := time.Now()
	must(silent.Write(query(2, "silent.example.test")))(t)

	// The answered flow ends after its linger: its udp record comes well
	// before the idle timeout, and only one flow holds a host socket.
	answeredPort := uint16(answered.LocalAddr().(*net.UDPAddr).Port)
	flowRecord := func(rs []records.Record, port uint16) *records.Record {
		for i := range rs {
			if rs[i].Kind == "udp" && rs[i].ClientPort == port && rs[i].DestPort == srv.Port() {
				return &rs[i]
			}
		}
		return nil
	}
	recs := r.records(func(rs []records.Record) bool { return flowRecord(rs, answeredPort) != nil })
	if took := time.Since(answeredAt); took > idle-time.Second {
		t.Errorf("the answered DNS flow ended %s after its answer; want about a second, well before the idle timeout (%s)", took, idle)
	}
	if a := r.app.proxy.Stats().UDPActive; a != 1 {
		t.Errorf("%d UDP flows hold host sockets once the answered one ended, want 1 (the silent one)", a)
	}
	if rec := flowRecord(recs, answeredPort); rec.BytesOut != 38 || rec.BytesIn != 38 || rec.Result != "ok" {
		t.Errorf("the answered flow's record: %+v", rec)
	}

	recs = r.records(func(rs []records.Record) bool { return countKind(rs, "dns") >= 2 })
	var gotAnswered, gotSilent bool
	for _, rec := range recs {
		if rec.Kind != "dns" {
			continue
		}
		gotAnswered = gotAnswered || (rec.QueryName == "nothere.example.test" && rec.QueryType == "AAAA" && rec.RCode == "NXDOMAIN" && rec.Result == "ok" && rec.ClientPort == answeredPort)
		gotSilent = gotSilent || (rec.QueryName == "silent.example.test" && rec.Result == "timeout")
	}
	if !gotAnswered || !gotSilent {
		t.Fatalf("dns records %s", summarizeRecords(recs))
	}
}

// TestUDPOneWayOutlivesIdleTimeout: a flow where only the destination keeps
// sending is not idle, whichever direction's read deadline passes. (gonet
// reports a passed deadline with an error of its own, which once ended such
// flows at the idle timeout.)
func TestUDPOneWayOutlivesIdleTimeout(t *testing.T) {
	const idle, sends, every = time.Second, 10, 300 * time.Millisecond
	r := newRig(t, func(o *Options) { o.IdleTimeout = idle }, nil)
	pc := must(net.ListenPacket("udp", netip.AddrPortFrom(r.net.server(3), 0).String()))(t)
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		for i := range sends {
			time.Sleep(every)
			pc.WriteTo([]byte{byte(i)}, from)
		}
	}()
	c := must(r.client.DialUDP(pc.LocalAddr().(*net.UDPAddr).AddrPort()))(t)
	defer c.Close()
	must(c.Write([]byte("subscribe")))(t)
	buf := make([]byte, 64)
	for i := range sends {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("datagram %d of %d (%v after the last client datagram): %v", i+1, sends, time.Duration(i+1)*every, err)
		}
	}
}

// TestServerFirstNotDelayed: a destination that speaks first (SSH, SMTP)
// reaches the client at once, not after the wait for the client's first
// bytes, and the relay carries on both ways.
func TestServerFirstNotDelayed(t *testing.T) {
	r := newRig(t, nil, nil)
	srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
		io.WriteString(c, "220 banner\r\n")
		io.Copy(c, c)
	})
	start := time.Now()
	c := must(r.client.DialTCP(ctxT(t, 5*time.Second), srv))(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(8 * time.Second))
	banner := make([]byte, 12)
	must(io.ReadFull(c, banner))(t)
	if d := time.Since(start); string(banner) != "220 banner\r\n" || d > 5*time.Second {
		t.Fatalf("banner %q after %v; the client is silent until it has the banner", banner, d)
	}
	must(c.Write([]byte("EHLO x\r\n")))(t)
	echo := make([]byte, 8)
	must(io.ReadFull(c, echo))(t)
	if string(echo) != "EHLO x\r\n" {
		t.Fatalf("echo %q", echo)
	}
}

// TestGWLBSendersOnly: with --gwlb-cidrs, GENEVE from any other address is
// dropped and counted: it could forge endpoints, clients and flows.
func TestGWLBSendersOnly(t *testing.T) {
	for _, allowed := range []bool{true, false} {
		r := newRig(t, func(o *Options) {
			o.GWLBCIDRs = []netip.Prefix{netip.MustParsePrefix("127.255.255.0/24")} // not the simulator
			if allowed {
				o.GWLBCIDRs = append(o.GWLBCIDRs, netip.MustParsePrefix("127.0.0.0/8")) // the simulator is 127.P.N.2
			}
		}, nil)
		srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), echoServer)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		type dialed struct {
			c   net.Conn
			err error
		}
		dial := make(chan dialed, 1)
		go func() {
			c, err := r.client.DialTCP(ctx, srv)
			dial <- dialed{c, err}
		}()
		if !allowed {
			// The SYN is dropped and counted: wait for the count, then give
			// up the dial, rather than wait for the dial to time out.
			waitFor(t, "the SYN counted as an unknown_sender drop", func() string {
				if d := r.stats().Netstack.Drops; d["unknown_sender"] == 0 {
					return fmt.Sprintf("drops %v", d)
				}
				return ""
			})
			cancel()
		}
		res := <-dial
		cancel()
		if allowed != (res.err == nil) {
			t.Fatalf("sender allowed=%v: dial error %v", allowed, res.err)
		}
		if res.err == nil {
			res.c.Close()
		}
		if d := r.stats().Netstack.Drops["unknown_sender"]; allowed != (d == 0) {
			t.Fatalf("sender allowed=%v: %d unknown_sender drops", allowed, d)
		}
	}
}

// TestLargeUDPReplyFragmented: a UDP reply larger than the inner MTU leaves
// the appliance's stack in IP fragments, each written to the link on its
// own; the later fragments carry no ports and must still find their flow's
// GENEVE header, so the client reassembles the whole datagram.
func TestLargeUDPReplyFragmented(t *testing.T) {
	const size = 20000 // three fragments at the inner MTU
	want := make([]byte, size)
	must(io.ReadFull(newPRNG(size), want))(t)
	for _, v6 := range []bool{false, true} {
		name := "IPv4"
		if v6 {
			name = "IPv6"
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(t, nil, nil)
			addr := netip.AddrPortFrom(r.net.server(3), 0)
			if v6 {
				pc, err := net.ListenPacket("udp", "[::1]:0")
				if err != nil {
					t.Skipf("no IPv6 loopback on this host: %v", err)
				}
				pc.Close()
				addr = netip.MustParseAddrPort("[::1]:0")
			}
			srv := serveUDP(t, addr, func(d []byte) []byte {
				if string(d) != "big please" {
					return nil
				}
				return want
			})
			c := must(r.client.DialUDP(srv))(t)
			defer c.Close()
			must(c.Write([]byte("big please")))(t)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 65536)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("no %d-byte reply (%v); appliance drops %v", size, err, r.stats().Netstack.Drops)
			}
			if !bytes.Equal(buf[:n], want) {
				t.Fatalf("reply of %d bytes differs from the %d sent", n, size)
			}
			if d := r.stats().Netstack.Drops["reply_without_flow"]; d != 0 {
				t.Errorf("%d replies dropped without a flow", d)
			}
		})
	}
}

// TestFlowsPerClient: a client at its share of the flow table gets no new
// flow (its packets are dropped and counted), while its flows go on and
// another client still gets one.
func TestFlowsPerClient(t *testing.T) {
	r := newRig(t, func(o *Options) { o.MaxFlows, o.MaxFlowsPerClient = 100, 3 }, nil)
	var fourthArrived atomic.Bool
	srv := serveUDP(t, netip.AddrPortFrom(r.net.server(3), 0), func(b []byte) []byte {
		if string(b) == "fourth" {
			fourthArrived.Store(true)
		}
		return b
	})
	ask := func(c net.Conn) error {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := c.Read(make([]byte, 16))
		return err
	}
	var conns []net.Conn
	for i := range 3 {
		c := must(r.client.DialUDP(srv))(t)
		defer c.Close()
		if err := ask(c); err != nil {
			t.Fatalf("flow %d of 3: %v", i+1, err)
		}
		conns = append(conns, c)
	}
	// The fourth flow's datagram is dropped and counted: wait for the count,
	// not for a reply to fail to come within some time.
	fourth := must(r.client.DialUDP(srv))(t)
	defer fourth.Close()
	must(fourth.Write([]byte("fourth")))(t)
	waitFor(t, "the fourth flow's datagram counted as a client_flow_limit drop", func() string {
		if d := r.stats().Netstack.Drops; d["client_flow_limit"] == 0 {
			return fmt.Sprintf("drops %v", d)
		}
		return ""
	})
	if err := ask(conns[0]); err != nil {
		t.Fatalf("a flow within the share stopped: %v", err)
	}
	other := must(r.ep.NewClientStack(netip.MustParseAddr("198.18.0.6"), netip.MustParseAddr("2001:db8::6")))(t)
	c := must(other.DialUDP(srv))(t)
	defer c.Close()
	if err := ask(c); err != nil {
		t.Fatalf("another client's first flow: %v", err)
	}
	// Datagrams sent after the fourth's have reached the server; it had not.
	if fourthArrived.Load() {
		t.Fatal("a fourth flow of one client was served; its share is 3")
	}
}

// TestDestinationClosesFirst: a destination that closes (or resets) before
// either side sent a byte, as servers do with unused preconnects, is seen
// by the silent client at once, not when it finally speaks.
func TestDestinationClosesFirst(t *testing.T) {
	r := newRig(t, nil, nil)
	for _, reset := range []bool{false, true} {
		srv := listenTCP(t, netip.AddrPortFrom(r.net.server(3), 0), func(c net.Conn) {
			if reset {
				c.(*net.TCPConn).SetLinger(0)
			}
			c.Close()
		})
		c, err := r.client.DialTCP(ctxT(t, 5*time.Second), srv)
		if reset && err != nil {
			continue // the reset came while the appliance connected or accepted: as good
		}
		if err != nil {
			t.Fatalf("destination closed (reset %v): dial: %v", reset, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		if reset && (err == nil || !strings.Contains(err.Error(), "reset")) || !reset && err != io.EOF {
			t.Fatalf("destination closed (reset %v): read %d, %v", reset, n, err)
		}
	}
}
