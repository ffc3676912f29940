package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/gwlbproxy/gwlbproxy/netstack/gwlbsim"
)

// openTUN creates (or attaches to) the layer-3 TUN device name and returns
// it with the name the kernel gave it. IFF_NO_PI: no packet-information
// prefix. With offload, the device also has a virtio-net header
// (IFF_VNET_HDR) and TCP (and, on Linux 6.2 and later, UDP) segmentation
// offload, so the kernel hands over TCP sends of up to 64 KiB at once and
// takes coalesced segments back: golang.zx2c4.com/wireguard/tun splits the
// former into packets of the MTU on Read, checksums completed, and
// coalesces the latter on Write (GRO). Without offload, every read returns
// one IP packet and every write takes one. The device vanishes when it is
// closed unless it was made persistent beforehand (ip tuntap add).
func openTUN(name string, offload bool) (tun.Device, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("TUN device name %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if offload {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("creating TUN device %q (TUNSETIFF, needs CAP_NET_ADMIN): %w", name, err)
	}
	// The fd is made non-blocking and joins the runtime's poller: reads
	// park a goroutine instead of a thread, and Close wakes a reader
	// blocked in Read, which is how the pump is stopped. "Unmonitored":
	// no netlink listener and no MTU change; addresses, routes and the MTU
	// are the caller's. On an error the fd is already the returned file's
	// and is closed with it when collected; gwlbsim exits on it anyway.
	dev, got, err := tun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		return nil, "", fmt.Errorf("setting up TUN device %q (offload %t): %w", name, offload, err)
	}
	return dev, got, nil
}

// device is a packet device read and written in batches, as
// golang.zx2c4.com/wireguard/tun's devices are: Read fills bufs[i][offset:]
// with one packet each, Write takes bufs[i][offset:], with offset bytes in
// front of each packet free for a header of the device's.
type device interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
}

// pump carries packets between a packet device (the TUN) and a simulated
// endpoint: what the device reads goes out with Endpoint.SendBatch, the
// endpoint's replies go to the device a batch at a time.
type pump struct {
	dev  device
	send func(pkts [][]byte) (failed int, err error)
	out  [][]byte // replies waiting for flush; the simulator's reader only

	fromDev, sendErrors, toDev, writeErrors, readErrors atomic.Uint64
}

// newPump connects dev and ep.
func newPump(dev device, ep *gwlbsim.Endpoint) *pump {
	p := &pump{dev: dev, send: ep.SendBatch}
	ep.SetBatchReceiver(p.reply, p.flush)
	return p
}

// pumpStats are the pump's counters, printed beside the simulator's.
type pumpStats struct {
	FromDevice  uint64 `json:"from_device"`  // packets read from the device (TSO sends count as their segments)
	SendErrors  uint64 `json:"send_errors"`  // packets the simulator could not send (unparsable, socket errors)
	ReadErrors  uint64 `json:"read_errors"`  // device reads that could not be split into packets
	ToDevice    uint64 `json:"to_device"`    // replies written to the device
	WriteErrors uint64 `json:"write_errors"` // writes the device refused (a write may carry several coalesced replies)
}

func (p *pump) stats() pumpStats {
	return pumpStats{
		FromDevice: p.fromDev.Load(), SendErrors: p.sendErrors.Load(), ReadErrors: p.readErrors.Load(),
		ToDevice: p.toDev.Load(), WriteErrors: p.writeErrors.Load(),
	}
}

// readLoop sends every packet read from the device through the simulator
// until the device is closed. The buffers are reused: send must not keep
// them (SendBatch does not).
func (p *pump) readLoop() error {
	n := max(p.dev.BatchSize(), 1)
	bufs := make([][]byte, n)
	pkts := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	for {
		k, err := p.dev.Read(bufs, sizes, 0)
		if k > 0 {
			pkts = pkts[:0]
			for i := range k {
				if sizes[i] > 0 {
					pkts = append(pkts, bufs[i][:sizes[i]])
				}
			}
			p.fromDev.Add(uint64(len(pkts)))
			if failed, serr := p.send(pkts); failed > 0 {
				// The kernel writes whatever it routes to the device (IPv6
				// router solicitations, say); one the simulator cannot
				// carry is counted, never fatal.
				if p.sendErrors.Add(uint64(failed)) == uint64(failed) {
					slog.Warn("gwlbsim: a packet from the TUN device could not be sent (further ones are only counted)", "err", serr)
				} else {
					slog.Debug("gwlbsim: packet from the TUN device not sent", "err", serr)
				}
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("reading the TUN device: %w", err)
		}
		// Not the device's read but splitting what it read (a segmented
		// send with more segments than buffers, a virtio-net header the
		// splitter refuses): that send is lost, the pump goes on.
		if p.readErrors.Add(1) == 1 {
			slog.Warn("gwlbsim: a read from the TUN device could not be split into packets (further ones are only counted)", "err", err)
		}
	}
}

// reply queues one accepted reply for the device; pkt[off:] is the inner
// packet, and the headroom before it takes the device's header.
func (p *pump) reply(pkt []byte, off int) {
	b := pkt[off-gwlbsim.ReplyHeadroom:]
	// The device coalesces later segments into this buffer's spare
	// capacity, and bounds a coalesced packet by that capacity alone
	// (less twice the offset): capped so, no packet it makes exceeds
	// 65,535 bytes, which an IP header's length field could not hold.
	p.out = append(p.out, b[:len(b):min(cap(b), maxCoalesced+2*gwlbsim.ReplyHeadroom)])
}

// maxCoalesced is the largest IP packet the device may make of coalesced
// segments.
const maxCoalesced = 65535

// flush writes the queued replies to the device in one batch; with
// offloads, segments of one TCP flow are coalesced into one write.
func (p *pump) flush() {
	if len(p.out) == 0 {
		return
	}
	n := uint64(len(p.out))
	_, err := p.dev.Write(p.out, gwlbsim.ReplyHeadroom)
	clear(p.out)
	p.out = p.out[:0]
	if err == nil {
		p.toDev.Add(n)
		return
	}
	failed := uint64(1)
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		failed = uint64(len(u.Unwrap()))
	}
	if errors.Is(err, os.ErrClosed) {
		return // shutting down: the device went first
	}
	p.toDev.Add(n - min(n, failed))
	if p.writeErrors.Add(failed) == failed {
		slog.Warn("gwlbsim: writing replies to the TUN device (further failures are only counted)", "err", err)
	}
}
