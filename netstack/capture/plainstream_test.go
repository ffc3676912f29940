package capture

import (
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// TestPlaintextClientFinAfterItsBytes: a client that writes its last
// request and closes at once (close_notify right behind it, the bytes
// still coalescing) has the request synthesized before its FIN: data after
// a FIN is left out of the stream by an IDS, and the client's last request
// would be hidden from its HTTP rules.
func TestPlaintextClientFinAfterItsBytes(t *testing.T) {
	c := queuedCapture(4096)
	s := c.OpenPlaintext(plainFlow)
	req := []byte("GET /evil/payload.sh HTTP/1.1\r\nHost: x\r\n\r\n")
	s.FromClient(req)
	s.ClientClosed()
	s.FromServer([]byte("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
	s.Close()
	c2s, _ := checkStream(t, drain(t, c), flipped(client), dest, plainMSS4)
	if string(c2s) != string(req) {
		t.Errorf("client's bytes in the stream %q, want %q", c2s, req)
	}
}

// TestPlaintextAcksLongWrites: one long write from one side is
// acknowledged by the other every plainAckEvery segments, so that an IDS,
// which inspects a direction's bytes once they are acknowledged, sees them
// as they come and the bytes in flight stay within the advertised window.
func TestPlaintextAcksLongWrites(t *testing.T) {
	c := queuedCapture(4096)
	s := c.OpenPlaintext(plainFlow)
	s.FromServer(make([]byte, 200*plainMSS4))
	pkts := drain(t, c)
	run, maxRun := 0, 0
	for _, p := range pkts[3:] {
		if p.out {
			run++
			maxRun = max(maxRun, run)
		} else {
			run = 0
		}
	}
	s.Close()
	if maxRun > plainAckEvery {
		t.Errorf("%d server segments in a row without the client's ACK, want at most %d", maxRun, plainAckEvery)
	}
}

// TestPlaintextWindowCoversUnackedSegments: both SYNs offer a window
// scale, so that the advertised window covers the plainAckEvery segments
// (93 KB) a side may send before the other's ACK; without it an IDS sees
// the sender run past a 64 KiB window (out-of-window data, which it may
// leave out of the stream).
func TestPlaintextWindowCoversUnackedSegments(t *testing.T) {
	c := queuedCapture(4096)
	s := c.OpenPlaintext(plainFlow)
	defer s.Close()
	pkts := drain(t, c)
	for i := range 2 {
		g := gopacket.NewPacket(pkts[i].data, layers.LayerTypeIPv4, gopacket.Default)
		tcp, _ := g.TransportLayer().(*layers.TCP)
		if tcp == nil || !tcp.SYN {
			t.Fatalf("packet %d is no SYN", i)
		}
		ws := -1
		for _, o := range tcp.Options {
			if o.OptionType == layers.TCPOptionKindWindowScale && len(o.OptionData) == 1 {
				ws = int(o.OptionData[0])
			}
		}
		if ws < 0 || (plainWindow<<ws) < plainAckEvery*plainMSS4 {
			t.Errorf("SYN %d: window scale %d: window %d under the %d bytes sent before an ACK", i, ws, plainWindow<<max(ws, 0), plainAckEvery*plainMSS4)
		}
	}
}

// TestPlaintextServerClosedThenReset: the appliance ends its side (a
// lingering close, a tunnel's destination that ended first), the client
// still sends, and the connection is then reset (the stacks' close): the
// stream shows the destination's FIN where it went, the client's bytes
// after it, and a RST in sequence after the FIN, acknowledging them all;
// the destination's bytes after its FIN are none.
func TestPlaintextServerClosedThenReset(t *testing.T) {
	c := queuedCapture(4096)
	s := c.OpenPlaintext(plainFlow)
	req, resp, more := []byte("POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n"), []byte("HTTP/1.1 413 Too Large\r\n\r\n"), []byte("body rest")
	s.FromClient(req)
	s.FromServer(resp)
	s.ServerClosed()
	s.FromServer([]byte("after the FIN: ignored"))
	s.FromClient(more)
	s.ServerReset()
	s.Close()
	pkts := drain(t, c)
	var cisn, sisn uint32
	fins, c2s := 0, 0
	for i, p := range pkts {
		tcp, _ := gopacket.NewPacket(p.data, layers.LayerTypeIPv4, gopacket.Default).TransportLayer().(*layers.TCP)
		if tcp == nil {
			t.Fatalf("packet %d: no TCP", i)
		}
		switch {
		case i == 0:
			cisn = tcp.Seq
		case i == 1:
			sisn = tcp.Seq
		case tcp.FIN:
			fins++
			if !p.out || tcp.Seq != sisn+1+uint32(len(resp)) {
				t.Errorf("packet %d: a FIN, out %v seq %d: want the destination's, at %d", i, p.out, tcp.Seq, sisn+1+uint32(len(resp)))
			}
		case tcp.RST:
			if i != len(pkts)-1 || !p.out {
				t.Fatalf("packet %d of %d: a RST, out %v: want the destination's, last", i, len(pkts), p.out)
			}
			if seq, ack := sisn+2+uint32(len(resp)), cisn+1+uint32(len(req)+len(more)); tcp.Seq != seq || tcp.Ack != ack {
				t.Errorf("RST seq %d ack %d, want %d %d (after the FIN, acknowledging the client's bytes)", tcp.Seq, tcp.Ack, seq, ack)
			}
		case !p.out:
			c2s += len(tcp.Payload)
		}
	}
	if fins != 1 || c2s != len(req)+len(more) {
		t.Errorf("%d FINs, %d client bytes; want the destination's FIN only and %d bytes", fins, c2s, len(req)+len(more))
	}
}
