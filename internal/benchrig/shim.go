package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// The shim: a stand-in appliance for measuring gwlbsim alone. It strips
// GENEVE and writes the inner packet to a TUN device of its own namespace,
// whose kernel forwards it to the server; what the kernel routes back into
// the device goes out as GENEVE under the flow's last header, to the
// simulator's port 6081, as gwlbtun (AWS's reference tunnel handler) does.
// It is the cheapest appliance there is: no TCP termination, so its
// numbers bound what gwlbsim itself carries.
const (
	shimAddr = "198.18.1.3" // on the appliance namespace's veth to the client
	shimTUN  = "shim0"
)

// runShim runs the shim until SIGTERM (benchrig shim ADDR SIMADDR TUN).
func runShim(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: benchrig shim LISTEN-ADDR SIM-ADDR TUN")
	}
	listen, sim := netip.MustParseAddr(args[0]), netip.MustParseAddr(args[1])
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(listen, netstack.GenevePort)))
	if err != nil {
		return fmt.Errorf("shim: listening: %w", err)
	}
	_ = conn.SetReadBuffer(8 << 20)
	_ = conn.SetWriteBuffer(8 << 20)
	dev, err := tun.CreateTUN(args[2], 8500)
	if err != nil {
		return fmt.Errorf("shim: creating the TUN device: %w", err)
	}
	s := &shim{conn: conn, dev: dev, to: netip.AddrPortFrom(sim, netstack.GenevePort), headers: map[netstack.TupleKey][]byte{}}
	go s.fromGENEVE()
	go s.fromTUN()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	conn.Close()
	dev.Close()
	return nil
}

type shim struct {
	conn    *net.UDPConn
	dev     tun.Device
	to      netip.AddrPort
	mu      sync.RWMutex
	headers map[netstack.TupleKey][]byte // by canonical 5-tuple: a reply finds its flow's
}

// fromGENEVE decapsulates every datagram into the device, one at a time.
func (s *shim) fromGENEVE() {
	buf := make([]byte, 65536+gwlbsim.ReplyHeadroom)
	bufs := make([][]byte, 1)
	for {
		n, err := s.conn.Read(buf[gwlbsim.ReplyHeadroom:])
		if err != nil {
			return
		}
		b := buf[gwlbsim.ReplyHeadroom : gwlbsim.ReplyHeadroom+n]
		h, reason := netstack.ParseHeader(b)
		if reason != netstack.DropNone {
			continue
		}
		p, reason := netstack.ParsePacket(b[h.Len:], h.Protocol)
		if reason != netstack.DropNone {
			continue
		}
		k := p.Tuple(0)
		s.mu.RLock()
		old := s.headers[k]
		s.mu.RUnlock()
		if string(old) != string(b[:h.Len]) {
			s.mu.Lock()
			s.headers[k] = append([]byte(nil), b[:h.Len]...)
			s.mu.Unlock()
		}
		// The device's header goes in front of the packet: the GENEVE
		// header is done with, and the headroom covers a short one.
		bufs[0] = buf[h.Len : gwlbsim.ReplyHeadroom+n]
		_, _ = s.dev.Write(bufs, gwlbsim.ReplyHeadroom)
	}
}

// fromTUN sends what the kernel routes into the device back as GENEVE.
func (s *shim) fromTUN() {
	n := s.dev.BatchSize()
	bufs, sizes := make([][]byte, n), make([]int, n)
	const off = netstack.MaxGeneveHeader
	for i := range bufs {
		bufs[i] = make([]byte, off+65535)
	}
	for {
		k, err := s.dev.Read(bufs, sizes, off)
		if err != nil && errors.Is(err, os.ErrClosed) {
			return
		}
		for i := range k {
			inner := bufs[i][off : off+sizes[i]]
			etherType := uint16(netstack.EtherTypeIPv4)
			if inner[0]>>4 == 6 {
				etherType = netstack.EtherTypeIPv6
			}
			p, reason := netstack.ParsePacket(inner, etherType)
			if reason != netstack.DropNone {
				continue
			}
			s.mu.RLock()
			h := s.headers[p.Tuple(0)]
			s.mu.RUnlock()
			if h == nil {
				continue
			}
			copy(bufs[i][off-len(h):], h)
			_, _ = s.conn.WriteToUDPAddrPort(bufs[i][off-len(h):off+sizes[i]], s.to)
		}
	}
}

// simAlone measures gwlbsim with the shim in place of the appliance: the
// same tests, after the appliance's. The appliance keeps running, idle.
func (r *rig) simAlone(ctx context.Context, bin string) error {
	r.sim.stop()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program for the shim: %w", err)
	}
	if err := run(ctx, "ip", "-n", r.tp.app, "addr", "add", shimAddr+"/24", "dev", "to-client"); err != nil {
		return err
	}
	if r.shim, err = start(r.tp.app, filepath.Join(r.work, "shim.log"), self, "shim", shimAddr, simAddr, shimTUN); err != nil {
		return err
	}
	if err := waitFor(ctx, 10*time.Second, "the shim's TUN device", r.shim, func() bool {
		return exec.CommandContext(ctx, "ip", "-n", r.tp.app, "link", "show", shimTUN).Run() == nil && listening(ctx, r.tp.app, "u", 6081)
	}); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", r.tp.app, "link", "set", shimTUN, "up"},
		{"-n", r.tp.app, "route", "replace", clientAddr + "/32", "dev", shimTUN},
	} {
		if err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	if err := r.tp.sysctl(ctx, r.tp.app, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf."+shimTUN+".rp_filter=0"); err != nil {
		return err
	}
	r.sim, err = start(r.tp.client, filepath.Join(r.work, "gwlbsim-shim.log"), filepath.Join(bin, "gwlbsim"), r.simArgs(shimAddr)...)
	if err != nil {
		return err
	}
	if err := r.tp.routeThroughTUN(ctx, r.o.mtu, r.sim); err != nil {
		return err
	}
	fmt.Println("\ngwlbsim alone: the shim (GENEVE to a TUN device, kernel forwarding) in place of the appliance")
	var rows []result
	for run := 1; run <= r.o.runs; run++ {
		for _, flows := range []int{1, r.o.parallel} {
			for _, reverse := range []bool{false, true} {
				res := result{run: run, flows: flows, reverse: reverse}
				// As for the appliance, the NAPI threads of each
				// namespace count for the process there.
				sim0, err1 := r.sim.cpuSeconds()
				shim0, err2 := r.shim.cpuSeconds()
				simRx0, err3 := r.tp.napiCPU(r.tp.client)
				shimRx0, err4 := r.tp.napiCPU(r.tp.app)
				t, err := r.iperf(ctx, flows, reverse)
				sim1, err5 := r.sim.cpuSeconds()
				shim1, err6 := r.shim.cpuSeconds()
				simRx1, err7 := r.tp.napiCPU(r.tp.client)
				shimRx1, err8 := r.tp.napiCPU(r.tp.app)
				if err != nil {
					return fmt.Errorf("through the shim, %s: %w\ngwlbsim log:\n%s", res.name(), err, r.sim.tail())
				}
				if err := errors.Join(err1, err2, err3, err4, err5, err6, err7, err8); err != nil {
					return err
				}
				res.appliance = t
				res.simCPU = sim1 - sim0 + simRx1 - simRx0
				res.appCPU = shim1 - shim0 + shimRx1 - shimRx0
				rows = append(rows, res)
				fmt.Printf("run %d  %-20s %6.2f Gbit/s  gwlbsim %.2f CPU-s/GiB  shim %.2f CPU-s/GiB\n",
					run, res.name(), t.gbps(), res.simPerGiB(), res.appPerGiB())
			}
		}
	}
	r.simAloneResults = rows
	return nil
}
