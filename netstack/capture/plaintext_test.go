package capture

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var plainFlow = PlaintextFlow{Endpoint: "vpce-00123456789abcdef", FlowCookie: "8c1f03aa", Client: client, Dest: dest}

// queuedCapture is a Capture with plaintext on whose pcap queue nobody
// empties: the test takes the packets out itself (drain).
func queuedCapture(packets int) *Capture {
	return &Capture{plaintext: true, pcapQ: newQueue(packets), done: make(chan struct{})}
}

type plainPacket struct {
	out  bool
	data []byte
}

// drain takes every packet queued for the pcap writer, checking each is
// marked as synthesized.
func drain(t testing.TB, c *Capture) []plainPacket {
	t.Helper()
	var out []plainPacket
	for len(c.pcapQ.full) > 0 {
		s := <-c.pcapQ.full
		if !s.plain || s.endpoint != epA || s.cookie != 0x8c1f03aa {
			t.Errorf("queued packet: plain %v, endpoint %x, cookie %x", s.plain, s.endpoint, s.cookie)
		}
		out = append(out, plainPacket{s.out, bytes.Clone(s.data())})
		c.pcapQ.release(s)
	}
	return out
}

// sum16 is RFC 1071's checksum, written out plainly: independent of the
// one the synthesizer uses.
func sum16(parts ...[]byte) uint16 {
	var s uint32
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	for i := 0; i < len(all); i += 2 {
		s += uint32(all[i])<<8 | uint32(all[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// checkStream checks that pkts are one whole TCP connection between
// client and dest: the handshake, checksums, sequence and acknowledgement
// numbers, segments of at most mss, a FIN each way; it returns what each
// side sent.
func checkStream(t testing.TB, pkts []plainPacket, client, dest netip.AddrPort, mss int) (c2s, s2c []byte) {
	t.Helper()
	var next [2]uint32 // 0: the client's, 1: the server's next sequence number
	var fin [2]bool
	for i, p := range pkts {
		var tcp *layers.TCP
		var src, dst netip.Addr
		var pseudo []byte
		first := layers.LayerTypeIPv4
		if client.Addr().Is6() {
			first = layers.LayerTypeIPv6
		}
		g := gopacket.NewPacket(p.data, first, gopacket.Default)
		if el := g.ErrorLayer(); el != nil {
			t.Fatalf("packet %d: %v", i, el.Error())
		}
		if ip4, ok := g.NetworkLayer().(*layers.IPv4); ok {
			if sum16(p.data[:20]) != 0 || int(ip4.Length) != len(p.data) || ip4.TTL == 0 {
				t.Fatalf("packet %d: bad IPv4 header % x", i, p.data[:20])
			}
			src, dst = netip.AddrFrom4([4]byte(ip4.SrcIP.To4())), netip.AddrFrom4([4]byte(ip4.DstIP.To4()))
			pseudo = append(append(append([]byte{}, ip4.SrcIP.To4()...), ip4.DstIP.To4()...), 0, 6)
			pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(p.data)-20))
		} else {
			ip6 := g.NetworkLayer().(*layers.IPv6)
			if int(ip6.Length) != len(p.data)-40 {
				t.Fatalf("packet %d: IPv6 payload length %d of %d", i, ip6.Length, len(p.data))
			}
			src, dst = netip.AddrFrom16([16]byte(ip6.SrcIP)), netip.AddrFrom16([16]byte(ip6.DstIP))
			pseudo = append(append([]byte{}, ip6.SrcIP...), ip6.DstIP...)
			pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(ip6.Length))
			pseudo = append(pseudo, 0, 0, 0, 6)
		}
		tcp, _ = g.TransportLayer().(*layers.TCP)
		if tcp == nil {
			t.Fatalf("packet %d: no TCP", i)
		}
		hdr := len(p.data) - len(tcp.LayerContents()) - len(tcp.Payload)
		if sum16(pseudo, p.data[hdr:]) != 0 {
			t.Fatalf("packet %d: bad TCP checksum", i)
		}
		me, peer := 0, 1
		sa, da := netip.AddrPortFrom(src, uint16(tcp.SrcPort)), netip.AddrPortFrom(dst, uint16(tcp.DstPort))
		if p.out {
			me, peer = 1, 0
			if sa != dest || da != client {
				t.Fatalf("packet %d: %s > %s, want %s > %s", i, sa, da, dest, client)
			}
		} else if sa != client || da != dest {
			t.Fatalf("packet %d: %s > %s, want %s > %s", i, sa, da, client, dest)
		}
		switch {
		case i == 0:
			if !tcp.SYN || tcp.ACK || me != 0 {
				t.Fatalf("packet 0 is no SYN from the client")
			}
			next[0] = tcp.Seq + 1
			continue
		case i == 1:
			if !tcp.SYN || !tcp.ACK || me != 1 || tcp.Ack != next[0] {
				t.Fatalf("packet 1 is no SYN-ACK")
			}
			next[1] = tcp.Seq + 1
			continue
		case tcp.SYN || !tcp.ACK || tcp.RST:
			t.Fatalf("packet %d: flags %v", i, tcp)
		}
		if tcp.Seq != next[me] || tcp.Ack != next[peer] {
			t.Fatalf("packet %d: seq %d ack %d, want %d %d", i, tcp.Seq, tcp.Ack, next[me], next[peer])
		}
		if len(tcp.Payload) > mss {
			t.Fatalf("packet %d: %d bytes, over the MSS %d", i, len(tcp.Payload), mss)
		}
		if fin[me] && (len(tcp.Payload) > 0 || tcp.FIN) {
			t.Fatalf("packet %d: sent after its side's FIN", i)
		}
		next[me] += uint32(len(tcp.Payload))
		if me == 0 {
			c2s = append(c2s, tcp.Payload...)
		} else {
			s2c = append(s2c, tcp.Payload...)
		}
		if tcp.FIN {
			fin[me] = true
			next[me]++
		}
	}
	if !fin[0] || !fin[1] {
		t.Fatalf("no FIN both ways: %v", fin)
	}
	if n := len(pkts); n < 2 || pkts[n-1].out == pkts[n-2].out {
		t.Fatalf("the last FIN is not acknowledged")
	}
	return c2s, s2c
}

// flipped is the client's address and port as a synthesized stream shows
// them.
func flipped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr(), a.Port()^PlaintextPortFlip)
}

// TestPlaintextStream: a bumped connection's bytes, both ways, become one
// TCP connection (the client's port flipped) with a handshake, valid checksums and sequence numbers,
// segments of at most the MSS, and a FIN each way; IPv4 and IPv6.
func TestPlaintextStream(t *testing.T) {
	for _, tc := range []struct {
		name         string
		client, dest netip.AddrPort
		mss          int
	}{
		{"ipv4", client, dest, plainMSS4},
		{"ipv6", netip.MustParseAddrPort("[2001:db8::5]:40001"), netip.MustParseAddrPort("[2001:db8:1::7]:443"), plainMSS6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := queuedCapture(4096)
			f := plainFlow
			f.Client, f.Dest = tc.client, tc.dest
			s := c.OpenPlaintext(f)
			if s == nil {
				t.Fatal("OpenPlaintext: nil")
			}
			req := []byte("GET /hello HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
			body := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes: segments
			resp := append([]byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))), body...)
			s.FromClient(req)
			s.FromServer(resp[:100])
			s.FromServer(resp[100:])
			s.ClientClosed()
			s.FromClient([]byte("after the FIN: ignored"))
			s.Close()
			s.FromServer([]byte("after Close: ignored"))
			pkts := drain(t, c)
			c2s, s2c := checkStream(t, pkts, flipped(tc.client), tc.dest, tc.mss)
			if !bytes.Equal(c2s, req) || !bytes.Equal(s2c, resp) {
				t.Errorf("the stream carries %d and %d bytes, want %d and %d", len(c2s), len(s2c), len(req), len(resp))
			}
			st := c.Stats().Plaintext
			if st.Streams != 1 || st.Packets != uint64(len(pkts)) || st.Bytes != uint64(len(req)+len(resp)) || st.Dropped != 0 {
				t.Errorf("stats %+v, %d packets", st, len(pkts))
			}
		})
	}
}

// TestPlaintextReset: a stream whose client aborted ends in the client's
// RST, and one the appliance reset in the destination's RST, in sequence
// after its side's bytes and acknowledging the other's, with no FIN either
// way and nothing after it, Close included.
func TestPlaintextReset(t *testing.T) {
	for _, fromClient := range []bool{true, false} {
		t.Run(fmt.Sprintf("client=%v", fromClient), func(t *testing.T) {
			c := queuedCapture(4096)
			s := c.OpenPlaintext(plainFlow)
			if s == nil {
				t.Fatal("OpenPlaintext: nil")
			}
			req, resp := []byte("GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\n")
			s.FromClient(req)
			s.FromServer(resp)
			if fromClient {
				s.ClientReset()
			} else {
				s.ServerReset()
			}
			s.Close()
			s.FromServer([]byte("after the reset: ignored"))
			pkts := drain(t, c)
			var cisn, sisn uint32
			for i, p := range pkts {
				g := gopacket.NewPacket(p.data, layers.LayerTypeIPv4, gopacket.Default)
				tcp, _ := g.TransportLayer().(*layers.TCP)
				if tcp == nil {
					t.Fatalf("packet %d: no TCP", i)
				}
				switch {
				case i == 0:
					cisn = tcp.Seq
				case i == 1:
					sisn = tcp.Seq
				case tcp.FIN:
					t.Errorf("packet %d is a FIN", i)
				case i == len(pkts)-1:
					if !tcp.RST || p.out == fromClient {
						t.Fatalf("the last packet is not the RST of the right side (client %v): out %v, %+v", fromClient, p.out, tcp)
					}
					seq, ack := cisn+1+uint32(len(req)), sisn+1+uint32(len(resp))
					if !fromClient {
						seq, ack = ack, seq
					}
					if tcp.Seq != seq || tcp.Ack != ack {
						t.Errorf("RST seq %d ack %d, want %d %d", tcp.Seq, tcp.Ack, seq, ack)
					}
				case tcp.RST:
					t.Errorf("packet %d is a RST, before the last", i)
				}
			}
		})
	}
}

// TestPlaintextOffOrFiltered: no stream without Config.Plaintext, nor for
// a flow the pcap filters leave out when there is no mirror; a malformed
// flow is refused rather than guessed at.
func TestPlaintextOffOrFiltered(t *testing.T) {
	off := &Capture{pcapQ: newQueue(16)}
	if off.OpenPlaintext(plainFlow) != nil {
		t.Error("a stream with plaintext off")
	}
	c := queuedCapture(16)
	f80, _ := ParseFilter("ports=80")
	c.filters = []Filter{f80}
	if c.OpenPlaintext(plainFlow) != nil || len(c.pcapQ.full) != 0 {
		t.Error("a stream for a flow the filters leave out")
	}
	fEP, _ := ParseFilter("endpoints=vpce-00123456789abcdef;dest_cidrs=192.0.2.0/24;client_cidrs=10.0.0.0/8;protocols=tcp;ports=443")
	c.filters = []Filter{f80, fEP}
	if c.OpenPlaintext(plainFlow) == nil {
		t.Error("no stream for a flow a filter selects")
	}
	for _, bad := range []PlaintextFlow{
		{Endpoint: "vpce-1", FlowCookie: "1", Client: client, Dest: dest},
		{Endpoint: plainFlow.Endpoint, FlowCookie: "xyz", Client: client, Dest: dest},
		{Endpoint: plainFlow.Endpoint, FlowCookie: "1", Client: client, Dest: netip.MustParseAddrPort("[2001:db8::1]:443")},
	} {
		if queuedCapture(16).OpenPlaintext(bad) != nil {
			t.Errorf("a stream for %+v", bad)
		}
	}
}

// TestPlaintextDropsCounted: a queue without room drops synthesized
// packets and counts them, for the output and for plaintext; nothing
// waits.
func TestPlaintextDropsCounted(t *testing.T) {
	c := queuedCapture(16)
	s := c.OpenPlaintext(plainFlow)
	s.FromServer(make([]byte, 100_000))
	s.Close()
	st := c.Stats()
	if st.Plaintext.Dropped == 0 || st.Plaintext.Dropped != c.pcapQ.dropped.Load() ||
		st.Plaintext.Packets != st.Plaintext.Dropped+uint64(len(c.pcapQ.full)) {
		t.Errorf("plaintext %+v, pcap queue dropped %d, holds %d", st.Plaintext, c.pcapQ.dropped.Load(), len(c.pcapQ.full))
	}
}

// TestPlaintextAllocatesNothing: a write's segments are built and queued
// without allocating.
func TestPlaintextAllocatesNothing(t *testing.T) {
	c := queuedCapture(4096)
	s := c.OpenPlaintext(plainFlow)
	b := make([]byte, 4000)
	allocs := testing.AllocsPerRun(200, func() {
		s.FromClient(b[:300])
		s.FromServer(b)
		for len(c.pcapQ.full) > 0 {
			c.pcapQ.release(<-c.pcapQ.full)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per write pair, want none", allocs)
	}
}

// TestPlaintextPcapTshark: written to the files, a synthesized stream is
// on an interface of its own, carries the marking comment, and tshark
// reads it as HTTP (its HTTP heuristic tried first: the port is the real
// one, 443), with valid checksums, no malformed packet and no TCP
// analysis flag, and follows it. (It warns of "unencrypted HTTP over an
// encrypted port": so it is, by design.)
func TestPlaintextPcapTshark(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{PcapDir: dir, Plaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	s := c.OpenPlaintext(plainFlow)
	req := "POST /upload/secret.txt HTTP/1.1\r\nHost: files.example.net\r\nContent-Length: 9\r\n\r\nexfiltrat"
	s.FromClient([]byte(req[:40]))
	s.FromClient([]byte(req[40:]))
	body := strings.Repeat("x", 5000)
	s.FromServer([]byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)))
	s.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	files := pcapFiles(t, dir)
	got := readPcapng(t, files...)
	for _, p := range got {
		if p.iface != "vpce-00123456789abcdef-plaintext" {
			t.Fatalf("a synthesized packet on interface %q", p.iface)
		}
	}
	tshark := requireTshark(t)
	opts := []string{"-r", files[0], "-o", "tcp.try_heuristic_first:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"}
	out := runTshark(t, tshark, append(opts, "-Y", "http.request", "-T", "fields", "-E", "separator=|",
		"-e", "frame.interface_name", "-e", "ip.src", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "http.request.method", "-e", "http.host", "-e", "http.request.uri", "-e", "frame.comment")...)
	want := "vpce-00123456789abcdef-plaintext|10.1.2.3|7232|443|POST|files.example.net|/upload/secret.txt|flow_cookie=0x8c1f03aa," + PlaintextComment + "\n"
	if out != want {
		t.Errorf("tshark shows\n%q\nwant\n%q", out, want)
	}
	if out := runTshark(t, tshark, append(opts, "-Y", "http.response.code == 200", "-T", "fields", "-e", "http.content_length")...); out != "5000\n" {
		t.Errorf("tshark reads the response as %q", out)
	}
	if out := runTshark(t, tshark, append(opts, "-Y", "_ws.malformed || _ws.expert.severity >= error || tcp.analysis.flags || tcp.checksum.status != 1 || ip.checksum.status != 1",
		"-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message", "-e", "_ws.expert.severity")...); out != "" {
		t.Errorf("tshark finds fault with packets:\n%s", out)
	}
	follow := runTshark(t, tshark, append(opts, "-q", "-z", "follow,tcp,ascii,0")...)
	if !strings.Contains(follow, "POST /upload/secret.txt HTTP/1.1") || !strings.Contains(follow, "exfiltrat") || !strings.Contains(follow, body[:100]) {
		t.Errorf("tshark does not follow the stream:\n%.2000s", follow)
	}
}

// FuzzPlaintextStream: whatever the writes (sizes, directions, a close by
// the client at any point), the packets are one valid TCP connection
// carrying exactly the bytes written before each side's end.
func FuzzPlaintextStream(f *testing.F) {
	f.Add([]byte{0, 10, 1, 200, 2, 1, 255})
	f.Add([]byte{1, 0, 0, 0, 3})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 64 {
			ops = ops[:64]
		}
		c := queuedCapture(1024)
		fl := plainFlow
		if len(ops) > 0 && ops[0]&0x80 != 0 {
			fl.Client, fl.Dest = netip.MustParseAddrPort("[2001:db8::5]:1"), netip.MustParseAddrPort("[2001:db8:1::7]:65535")
		}
		s := c.OpenPlaintext(fl)
		var wantC, wantS []byte
		clientDone := false
		buf := make([]byte, 255*64)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		for i := 0; i+1 < len(ops); i += 2 {
			n := int(ops[i+1]) * (1 + int(ops[i]>>2&0x3f))
			switch ops[i] & 3 {
			case 0:
				s.FromClient(buf[:n])
				if !clientDone {
					wantC = append(wantC, buf[:n]...)
				}
			case 1, 3:
				s.FromServer(buf[:n])
				wantS = append(wantS, buf[:n]...)
			case 2:
				s.ClientClosed()
				clientDone = true
			}
		}
		s.Close()
		mss := plainMSS4
		if fl.Client.Addr().Is6() {
			mss = plainMSS6
		}
		c2s, s2c := checkStream(t, drain(t, c), flipped(fl.Client), fl.Dest, mss)
		if !bytes.Equal(c2s, wantC) || !bytes.Equal(s2c, wantS) {
			t.Fatalf("carried %d/%d bytes, want %d/%d", len(c2s), len(s2c), len(wantC), len(wantS))
		}
	})
}

// TestPlaintextMirrorFrame: on the mirror a synthesized packet has the
// endpoint's VLAN plus PlaintextVLANOffset and MAC addresses of its own,
// the direction in them as for wire packets; the wire packet beside it
// keeps the endpoint's VLAN.
func TestPlaintextMirrorFrame(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := &mirror{name: "test", f: w, frame: make([]byte, frameHeader+largeSlot), vlans: map[uint64]vlanEntry{}, maxVLANs: MaxPlaintextVLANs}
	defer m.close()
	pkt := tcpPacket(t, dest, client, []byte("reply"))
	for _, tc := range []struct {
		plain    bool
		vlan     uint16
		dst, src [6]byte
	}{
		{false, 1, clientMAC, destMAC},
		{true, 1 + PlaintextVLANOffset, plainClientMAC, plainDestMAC},
	} {
		s := &slot{endpoint: epA, out: true, plain: tc.plain, buf: bytes.Clone(pkt), n: len(pkt)}
		m.write(s)
		f := make([]byte, frameHeader+len(pkt))
		if _, err := io.ReadFull(r, f); err != nil {
			t.Fatal(err)
		}
		if [6]byte(f[0:6]) != tc.dst || [6]byte(f[6:12]) != tc.src || binary.BigEndian.Uint16(f[12:]) != 0x8100 ||
			binary.BigEndian.Uint16(f[14:]) != tc.vlan || binary.BigEndian.Uint16(f[16:]) != 0x0800 || !bytes.Equal(f[frameHeader:], pkt) {
			t.Errorf("plain %v: frame % x", tc.plain, f[:frameHeader])
		}
	}
	if st := m.stats(newQueue(1)); st.PlaintextVLANOffset != PlaintextVLANOffset || st.VLANs["vpce-00123456789abcdef"] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// BenchmarkPlaintextWrite is what a bumped connection's 16 KiB write (a
// full TLS record) costs the data path with plaintext on: 12 segments and
// an ACK built and queued for the pcap writer, which writes them on its own
// goroutine. With "no reader" nothing empties the queue: every packet is
// dropped and counted, the cost of an output that has fallen behind.
func BenchmarkPlaintextWrite(b *testing.B) {
	for _, bc := range []struct {
		name string
		c    func(b *testing.B) *Capture
	}{
		{"pcap", func(b *testing.B) *Capture {
			c, err := New(Config{PcapDir: b.TempDir(), Plaintext: true, RotateBytes: 16 << 20, MaxBytes: 64 << 20})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			return c
		}},
		{"no reader", func(*testing.B) *Capture { return queuedCapture(DefaultQueuePackets) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := bc.c(b)
			s := c.OpenPlaintext(plainFlow)
			buf := make([]byte, 16<<10)
			b.ReportAllocs()
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s.FromServer(buf)
			}
			b.StopTimer()
			st := c.Stats().Plaintext
			b.ReportMetric(float64(st.Dropped)/float64(st.Packets), "dropped/packet")
		})
	}
}
