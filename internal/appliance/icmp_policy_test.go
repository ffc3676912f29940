package appliance

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/net/icmp"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestICMPEchoPolicy: echo is subject to the policy. A destination a rule
// denies for icmp gets no reply and one deny record for the flow, however
// many requests it sends; an allowed one gets the real destination's replies
// and an allow record.
func TestICMPEchoPolicy(t *testing.T) {
	if c, err := icmp.ListenPacket("udp4", "0.0.0.0"); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("this host allows no unprivileged ICMP sockets (net.ipv4.ping_group_range): %v; "+
			`as root: echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range`, err))
	} else {
		c.Close()
	}
	var allowed, denied netip.Addr
	r := newRig(t, func(o *Options) {
		// The test net's servers, from the address newRig gave the appliance.
		app := netip.MustParseAddrPort(o.GeneveAddr).Addr().As4()
		allowed, denied = netip.AddrFrom4([4]byte{127, app[1], app[2], 3}), netip.AddrFrom4([4]byte{127, app[1], app[2], 4})
		o.Config = filepath.Join(t.TempDir(), "gwlbproxy.yaml")
		pol := fmt.Sprintf("policy:\n  default: allow\n  rules:\n"+
			"    - {name: no-ping, protocols: [icmp], dest_cidrs: [%q], action: deny}\n", denied.String())
		if err := os.WriteFile(o.Config, []byte(pol), 0o644); err != nil {
			t.Fatal(err)
		}
		o.IdleTimeout = time.Second
	}, nil)
	if allowed != r.net.server(3) || denied != r.net.server(4) {
		t.Fatalf("servers %s, %s outside the test net %d", allowed, denied, r.net.n)
	}

	type reply struct {
		from    netip.Addr
		id, seq uint16
	}
	var mu sync.Mutex
	var got []reply
	var delivered atomic.Uint64 // every packet the simulator handed the client, counted once seen
	r.client.SetTap(func(inner []byte) bool {
		defer delivered.Add(1)
		if len(inner) >= 28 && inner[9] == 1 && inner[20] == 0 { // ICMP echo reply
			src, _ := netip.AddrFromSlice(inner[12:16])
			mu.Lock()
			got = append(got, reply{src, binary.BigEndian.Uint16(inner[24:]), binary.BigEndian.Uint16(inner[26:])})
			mu.Unlock()
			return true
		}
		return false
	})
	replies := func(from netip.Addr) []reply {
		mu.Lock()
		defer mu.Unlock()
		var out []reply
		for _, rp := range got {
			if rp.from == from {
				out = append(out, rp)
			}
		}
		return out
	}
	ping := func(dst netip.Addr, id, seq uint16) {
		t.Helper()
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: clientV4.AsSlice(), DstIP: dst.AsSlice()}
		echo := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: id, Seq: seq}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, echo, gopacket.Payload("ping!")); err != nil {
			t.Fatal(err)
		}
		must(0, r.client.Send(buf.Bytes()))(t)
	}

	// The denied destination first, a burst of requests, then the allowed
	// one.
	for seq := uint16(1); seq <= 20; seq++ {
		ping(denied, 4343, seq)
	}
	for seq := uint16(1); seq <= 2; seq++ {
		ping(allowed, 4242, seq)
		deadline := time.Now().Add(3 * time.Second)
		for len(replies(allowed)) < int(seq) {
			if time.Now().After(deadline) {
				t.Fatalf("no echo reply from the allowed destination %s to seq %d", allowed, seq)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if rs := replies(allowed); rs[0] != (reply{allowed, 4242, 1}) || rs[1] != (reply{allowed, 4242, 2}) {
		t.Fatalf("replies from the allowed destination %+v", rs)
	}

	// One deny record for the denied flow's 20 requests; the allowed flow's
	// record comes when it idles.
	recs := r.records(func(rs []records.Record) bool {
		return findRecord(rs, "icmp", netip.AddrPortFrom(denied, 0)) != nil && findRecord(rs, "icmp", netip.AddrPortFrom(allowed, 0)) != nil
	})
	// No reply from the denied destination. Checked once none can come any
	// more, not after a pause that a slow machine could outlast: all 22
	// requests reached the relay, no echo flow is left to pass a reply back
	// (a relayed flow ends when it idles), and the client has seen every
	// packet the appliance sent it.
	waitFor(t, "all 22 echo requests at the relay, no echo flow active, every packet the appliance sent seen by the client", func() string {
		st := r.stats()
		if st.Netstack.EchoRequests == 22 && st.Proxy.EchoActive == 0 && delivered.Load() == st.Netstack.PacketsOut {
			return ""
		}
		return fmt.Sprintf("%d echo requests, %d echo flows active, client saw %d of %d packets sent",
			st.Netstack.EchoRequests, st.Proxy.EchoActive, delivered.Load(), st.Netstack.PacketsOut)
	})
	if rs := replies(denied); len(rs) != 0 {
		t.Fatalf("the denied destination %s answered %d of 20 echo requests", denied, len(rs))
	}
	var denies []records.Record
	for _, rec := range recs {
		if rec.Kind == "icmp" && rec.DestIP == denied.String() {
			denies = append(denies, rec)
		}
	}
	if len(denies) != 1 {
		t.Fatalf("%d icmp records for the denied flow, want 1: %+v", len(denies), denies)
	}
	if d := denies[0]; d.Action != "deny" || d.Rule != "no-ping" || d.Result != "denied" || d.Error != "denied by policy" || d.Packets != 0 {
		t.Fatalf("deny record %+v", d)
	}
	if a := findRecord(recs, "icmp", netip.AddrPortFrom(allowed, 0)); a == nil || a.Action != "allow" || a.Rule != "default" ||
		a.Result != "ok" || a.Packets != 2 || a.BytesIn == 0 {
		t.Fatalf("allow record %+v", a)
	}
}

// TestDrainEndsEchoFlows: a client pings an allowed destination every
// 100 ms right through the drain. Its echo flow, relayed from a host ping
// socket that closing the packet stack leaves open, would otherwise idle
// out only after --idle-timeout: the appliance must end it when it closes
// the proxy and write its record before it exits, within the drain.
func TestDrainEndsEchoFlows(t *testing.T) {
	if c, err := icmp.ListenPacket("udp4", "0.0.0.0"); err != nil {
		testenv.RequirePrivileged(t, fmt.Sprintf("this host allows no unprivileged ICMP sockets (net.ipv4.ping_group_range): %v", err))
	} else {
		c.Close()
	}
	r := newRig(t, nil, nil)
	dst := r.net.server(3)
	var replies atomic.Int64
	r.client.SetTap(func(inner []byte) bool {
		if len(inner) >= 28 && inner[9] == 1 && inner[20] == 0 { // ICMP echo reply
			replies.Add(1)
			return true
		}
		return false
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for seq := uint16(1); ; seq++ {
			ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: clientV4.AsSlice(), DstIP: dst.AsSlice()}
			echo := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 4242, Seq: seq}
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, echo, gopacket.Payload("ping!")); err != nil {
				panic(err)
			}
			_ = r.client.Send(buf.Bytes()) // fails once the appliance is gone: the client pings on regardless
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	waitFor(t, "an echo reply", func() string {
		if replies.Load() == 0 {
			return "none yet"
		}
		return ""
	})
	r.cancel()
	select {
	case <-r.done:
		r.done <- nil // for the cleanup's wait
	case <-time.After(rigDrain + 3*time.Second):
		t.Fatal("the appliance did not stop within its drain")
	}
	rec := findRecord(r.readRecords(), "icmp", netip.AddrPortFrom(dst, 0))
	if rec == nil {
		t.Fatalf("no icmp record for the echo flow pinging through the drain (%d replies seen)", replies.Load())
	}
	if rec.Action != "allow" || rec.Result != "ok" || rec.Packets < 2 || rec.BytesIn == 0 {
		t.Fatalf("icmp record %+v, want an ok allow of the requests sent during the drain", rec)
	}
}
