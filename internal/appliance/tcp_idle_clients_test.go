// The idle TCP flows' clients: raw segments through the simulator, so that
// no client stack is counted in the appliance's memory.

package appliance

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// An idle flow first exchanges these, as an SSH connection exchanges its
// banners (the client first here): the appliance then relays it as opaque
// TCP, and both ends go quiet with the connection established. That is
// what a kept-alive connection between requests looks like to the relay.
var (
	tcpIdleRequest = []byte("SSH-2.0-gwlbproxy_idle_client\r\n")
	tcpIdleReply   = []byte("SSH-2.0-gwlbproxy_idle_server\r\n")
)

// idleTCPClients are N TCP clients behind the rig's endpoint written as raw
// segments, with a few words of state each: unlike the rig's gVisor client
// stack, they cost this process next to nothing, so the memory measured is
// the appliance's (and the simulator's flow table, a few hundred bytes a
// flow). Flow i comes from 198.18.(i/perClient).1 and a port of its own
// (198.19 and on past 125,000 flows), and goes to dsts[i%len(dsts)].
type idleTCPClients struct {
	t         testing.TB
	ep        *gwlbsim.Endpoint
	dsts      []netip.AddrPort
	perClient int

	mu    sync.Mutex // the flows, and the order of what is sent
	flows []idleTCPFlow

	established atomic.Int64 // SYN-ACK received
	answered    atomic.Int64 // the whole reply received and acknowledged
	finished    atomic.Int64 // the appliance's FIN received and answered
	resets      atomic.Int64
	sendErr     atomic.Pointer[error]
}

type idleTCPFlow struct {
	state  idleTCPState
	irs    uint32 // the appliance's initial sequence number
	rcvNxt uint32
}

type idleTCPState uint8

const (
	idleTCPNew idleTCPState = iota
	idleTCPSynSent
	idleTCPRequestSent
	idleTCPIdle
	idleTCPFinSent
	idleTCPReset
)

// idleTCPISS is every client's initial sequence number.
const idleTCPISS = 1_000_000

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

func newIdleTCPClients(t testing.TB, ep *gwlbsim.Endpoint, dsts []netip.AddrPort, n, perClient int) *idleTCPClients {
	c := &idleTCPClients{t: t, ep: ep, dsts: dsts, perClient: perClient, flows: make([]idleTCPFlow, n)}
	ep.SetReceiver(c.receive) // instead of the rig's client stack
	return c
}

// dst is flow i's destination: the server's ports in turn, so that the
// appliance's connections to each stay within the ephemeral ports.
func (c *idleTCPClients) dst(i int) netip.AddrPort { return c.dsts[i%len(c.dsts)] }

func (c *idleTCPClients) src(i int) netip.AddrPort {
	k := i / c.perClient
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18 + byte(k/250), byte(k % 250), 1}), uint16(10000+i%c.perClient))
}

func (c *idleTCPClients) index(a [4]byte, port uint16) (int, bool) {
	if a[0] != 198 || a[1] < 18 || a[3] != 1 || port < 10000 || int(port) >= 10000+c.perClient {
		return 0, false
	}
	i := ((int(a[1])-18)*250+int(a[2]))*c.perClient + int(port) - 10000
	return i, i < len(c.flows)
}

// send sends flow i a segment. Under mu.
func (c *idleTCPClients) send(i int, flags uint8, seq, ack uint32, payload []byte) {
	src, dst := c.src(i), c.dst(i)
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, Ack: ack, Window: 65535,
		FIN: flags&tcpFIN != 0, SYN: flags&tcpSYN != 0, RST: flags&tcpRST != 0, PSH: flags&tcpPSH != 0, ACK: flags&tcpACK != 0,
	}
	if tcp.SYN {
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload(payload)); err != nil {
		c.sendErr.CompareAndSwap(nil, &err)
		return
	}
	if err := c.ep.Send(buf.Bytes()); err != nil {
		c.sendErr.CompareAndSwap(nil, &err)
	}
}

// open sends flow i its SYN, or what it still needs to get going: the SYN
// again, or the request again (a datagram dropped under the burst).
func (c *idleTCPClients) open(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := &c.flows[i]
	switch f.state {
	case idleTCPNew, idleTCPSynSent:
		f.state = idleTCPSynSent
		c.send(i, tcpSYN, idleTCPISS, 0, nil)
	case idleTCPRequestSent:
		c.send(i, tcpPSH|tcpACK, idleTCPISS+1, f.rcvNxt, tcpIdleRequest)
	}
}

func (c *idleTCPClients) idle(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flows[i].state >= idleTCPIdle
}

// receive takes the appliance's segments to the clients, on the
// simulator's reader goroutine.
func (c *idleTCPClients) receive(inner []byte) {
	if len(inner) < 20 || inner[0]>>4 != 4 || inner[9] != byte(layers.IPProtocolTCP) {
		return
	}
	ihl, total := int(inner[0]&0x0f)*4, int(binary.BigEndian.Uint16(inner[2:4]))
	if total > len(inner) || ihl+20 > total {
		return
	}
	seg := inner[ihl:total]
	doff := int(seg[12]>>4) * 4
	if doff < 20 || doff > len(seg) {
		return
	}
	i, ok := c.index([4]byte(inner[16:20]), binary.BigEndian.Uint16(seg[2:4]))
	if !ok {
		return
	}
	seq, ack, flags, payload := binary.BigEndian.Uint32(seg[4:8]), binary.BigEndian.Uint32(seg[8:12]), seg[13], seg[doff:]
	sndNxt := uint32(idleTCPISS + 1 + len(tcpIdleRequest))

	c.mu.Lock()
	defer c.mu.Unlock()
	f := &c.flows[i]
	switch {
	case f.state == idleTCPReset:
	case flags&tcpRST != 0:
		f.state = idleTCPReset
		c.resets.Add(1)
	case flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK:
		if ack != idleTCPISS+1 || f.state > idleTCPRequestSent {
			return
		}
		if f.state < idleTCPRequestSent {
			f.state, f.irs, f.rcvNxt = idleTCPRequestSent, seq, seq+1
			c.established.Add(1)
		}
		// The handshake's last ACK carries the request.
		c.send(i, tcpPSH|tcpACK, idleTCPISS+1, f.rcvNxt, tcpIdleRequest)
	case f.state < idleTCPRequestSent:
	default:
		if len(payload) > 0 && seq == f.rcvNxt {
			f.rcvNxt += uint32(len(payload))
			if f.state == idleTCPRequestSent && f.rcvNxt-f.irs-1 >= uint32(len(tcpIdleReply)) {
				f.state = idleTCPIdle
				c.answered.Add(1)
			}
		}
		switch {
		case flags&tcpFIN != 0:
			if seq+uint32(len(payload)) == f.rcvNxt {
				f.rcvNxt++
			}
			if f.state != idleTCPFinSent {
				f.state = idleTCPFinSent
				c.finished.Add(1)
			}
			c.send(i, tcpFIN|tcpACK, sndNxt, f.rcvNxt, nil)
		case len(payload) > 0 || seq != f.rcvNxt:
			// Data, or a keepalive probe (one byte below rcvNxt): ACK it.
			if f.state == idleTCPFinSent {
				sndNxt++
			}
			c.send(i, tcpACK, sndNxt, f.rcvNxt, nil)
		}
	}
}
