package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestSynWaitClientShare: a client holding many half-open connections and
// sending, on each, a RST out of the window (which the stack ignores, so
// its SYN's wait lasts the whole 20 ms) and a SYN, kept every waiting-SYN
// slot, and another client's SYN right after its own RST then went in at
// once and was refused, as before the wait existed (8 to 12 of 20 with the
// cap lowered to 64). Each client has a share of the waiting SYNs, so the
// flooder holds at most its share and the other's SYNs still wait. An IPv6
// flooder spreading its connections over addresses of its /80 is one
// client.
func TestSynWaitClientShare(t *testing.T) {
	fams := []struct {
		name             string
		victim, server   netip.AddrPort
		attacker         func(i int) netip.AddrPort
		etherV, etherAtk uint16
	}{
		{"IPv4", netip.MustParseAddrPort("198.18.0.7:40000"), netip.MustParseAddrPort("198.18.9.9:443"),
			func(i int) netip.AddrPort {
				return netip.AddrPortFrom(netip.MustParseAddr("198.18.0.5"), uint16(41000+i))
			}, EtherTypeIPv4, EtherTypeIPv4},
		{"IPv6", netip.MustParseAddrPort("[2001:db8::7:0:0:1]:40000"), netip.MustParseAddrPort("[2001:db8::9]:443"),
			func(i int) netip.AddrPort {
				a := netip.MustParseAddr("2001:db8::5:0:0:0").As16()
				a[15] = byte(1 + i%16) // another address of the same /80
				return netip.AddrPortFrom(netip.AddrFrom16(a), uint16(41000+i))
			}, EtherTypeIPv6, EtherTypeIPv6},
	}
	for _, fam := range fams {
		t.Run(fam.name, func(t *testing.T) {
			// The cap leaves room for another client's SYNs only if the
			// flooder's share is smaller than it.
			const capW, attackerConns = maxSynWaitersPerClient + 32, 2 * maxSynWaitersPerClient
			h := &AcceptHandler{Conns: make(chan *Conn, 1000)}
			gwlb := gwlbSocket(t, "127.0.0.2:0")
			gwlb.SetReadBuffer(8 << 20)
			s := startServer(t, Config{Handler: h, ReplyPort: gwlb.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
			s.synWaitCap = capW
			from := netip.MustParseAddrPort("127.0.0.2:47001")
			sender := func(ether uint16) func(pkts ...[]byte) {
				co := newCoalescer()
				var dgram []byte
				return func(pkts ...[]byte) {
					for _, p := range pkts {
						dgram = append(AppendHeader(dgram[:0], ether, 0, 7, 8, 9, nil), p...)
						s.handleDatagram(dgram, from, co)
					}
					co.flush()
				}
			}
			victim, server := fam.victim, fam.server
			vsend := sender(fam.etherV)
			replies := make(chan header.TCP, 10000) // the victim's
			go func() {
				buf := make([]byte, maxDatagram)
				for {
					tcp, err := readReplyTCP(gwlb, buf)
					if err != nil {
						return
					}
					if tcp != nil && tcp.DestinationPort() == victim.Port() {
						select {
						case replies <- append(header.TCP(nil), tcp...):
						default:
						}
					}
				}
			}()
			next := func() header.TCP {
				select {
				case r := <-replies:
					return r
				case <-time.After(2 * time.Second):
					return nil
				}
			}
			drain := func() {
				for len(replies) > 0 {
					<-replies
				}
			}
			accept := func(what string) {
				select {
				case c := <-h.Conns:
					t.Cleanup(c.Abort)
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: no connection accepted", what)
				}
			}
			seq := uint32(1000)
			vsend(clientSegment(victim, server, seq, 0, header.TCPFlagSyn, nil))
			sa := next()
			if sa == nil {
				t.Fatal("no SYN-ACK to the victim's first SYN")
			}
			seq++
			ack := sa.SequenceNumber() + 1
			vsend(clientSegment(victim, server, seq, ack, header.TCPFlagAck, nil))
			accept("the victim's first connection")

			asend := sender(fam.etherAtk)
			for i := range attackerConns {
				asend(clientSegment(fam.attacker(i), server, 1000, 0, header.TCPFlagSyn, nil))
			}
			waitUntil(t, 5*time.Second, "the flooder's connections half-open", func() (bool, string) {
				n := 0
				for i := range attackerConns {
					k := flowKeyOf(fam.attacker(i), server)
					if s.holdsTCP(&k) {
						n++
					}
				}
				return n == attackerConns, "some not yet"
			})
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var most atomic.Int32
			var pairs atomic.Int64
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					pairs.Add(1)
					a := fam.attacker(n % attackerConns)
					asend(clientSegment(a, server, 1001+1<<30, 0, header.TCPFlagRst, nil), // out of the window: ignored
						clientSegment(a, server, 1000, 0, header.TCPFlagSyn, nil))
					if w := s.synWaiters.Load(); w > most.Load() {
						most.Store(w)
					}
					if n%attackerConns == attackerConns-1 {
						time.Sleep(time.Millisecond)
					}
				}
			}()
			defer func() { close(stop); wg.Wait() }()
			waitUntil(t, 5*time.Second, "the flooder's share of waiting SYNs taken", func() (bool, string) {
				return most.Load() >= maxSynWaitersPerClient, fmt.Sprintf("at most %d", most.Load())
			})
			start := time.Now()
			refused := 0
			for i := range 20 {
				drain()
				vsend(clientSegment(victim, server, seq, ack, header.TCPFlagRst|header.TCPFlagAck, nil))
				seq += 1 << 20
				vsend(clientSegment(victim, server, seq, 0, header.TCPFlagSyn, nil))
				seq++
				got := next()
				// A SYN-ACK for an earlier SYN is the stack sending it
				// again (its ACK not yet taken on a loaded machine),
				// come after the drain: no answer to this SYN.
				for got != nil && got.Flags() == header.TCPFlagSyn|header.TCPFlagAck && got.AckNumber() != seq {
					got = next()
				}
				if got == nil {
					t.Fatalf("reconnect %d: no answer", i+1)
				}
				if got.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
					t.Logf("reconnect %d refused: answered %v, ack %d (the SYN's %d)", i+1, got.Flags(), got.AckNumber(), seq)
					refused++
					// The client's kernel sends its SYN again a second
					// later; here a new one, once the old connection is
					// surely gone.
					time.Sleep(30 * time.Millisecond)
					drain()
					seq += 1 << 20
					vsend(clientSegment(victim, server, seq, 0, header.TCPFlagSyn, nil))
					seq++
					if got = next(); got == nil || got.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
						t.Fatalf("reconnect %d: the new SYN answered %v", i+1, got)
					}
				}
				ack = got.SequenceNumber() + 1
				vsend(clientSegment(victim, server, seq, ack, header.TCPFlagAck, nil))
				accept(fmt.Sprintf("reconnect %d", i+1))
			}
			el := time.Since(start)
			t.Logf("flooder: %d RST+SYN pairs over %d half-open connections (%.0f a second); waiting SYNs at most %d (cap %d, share %d); the other client's reconnects right after its RST: %d of 20 refused",
				pairs.Load(), attackerConns, float64(pairs.Load())/el.Seconds(), most.Load(), capW, maxSynWaitersPerClient, refused)
			if refused > 0 {
				t.Errorf("%d of 20 reconnects right after the client's RST refused while another client flooded", refused)
			}
			if m := most.Load(); m > maxSynWaitersPerClient+1 {
				t.Errorf("%d SYNs waited at once, the flooder's share %d and the other client's one", m, maxSynWaitersPerClient)
			}
		})
	}
}

// flowKeyOf is the flow key of client's segments to server, endpoint 7.
func flowKeyOf(client, server netip.AddrPort) FlowKey {
	return FlowKey{Endpoint: 7, Proto: protoTCP, IPv6: client.Addr().Is6(),
		ClientAddr: client.Addr().As16(), ServerAddr: server.Addr().As16(),
		ClientPort: client.Port(), ServerPort: server.Port()}
}

// TestSynWaitKeepsClient: a client whose last flow leaves the table while
// a SYN of its waits is kept, so that its flows made again count in the
// same share as that wait, and dropped when the last wait ends, with no
// flow: not before, and not left behind.
func TestSynWaitKeepsClient(t *testing.T) {
	c := &clientShares{max: 10}
	addr := netip.MustParseAddr("198.18.0.5").As16()
	held := func() *client {
		k := clientKeyOf(7, addr)
		sh := c.shard(&k)
		sh.mu.Lock()
		defer sh.mu.Unlock()
		return sh.clients[k]
	}
	cl, _ := c.take(7, addr, 10)
	cl.synWaits.Add(1)
	c.give(cl)
	if held() != cl {
		t.Fatal("a client whose SYN waits dropped with its last flow")
	}
	again, _ := c.take(7, addr, 10)
	if again != cl {
		t.Fatal("a flow made again while the client's SYN waits counted in a new share")
	}
	again.synWaits.Add(1)
	cl.synWaitEnd()
	cl.synWaitEnd()
	if held() != cl {
		t.Fatal("a client holding a flow dropped with its last wait")
	}
	cl.synWaits.Add(1)
	c.give(cl)
	cl.synWaitEnd()
	if held() != nil {
		t.Fatal("a client with no flow and no waiting SYN kept")
	}
	cl, _ = c.take(7, addr, 10)
	c.give(cl)
	if held() != nil {
		t.Fatal("a client with no flow and no waiting SYN kept")
	}
}
