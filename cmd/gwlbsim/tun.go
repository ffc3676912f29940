package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// openTUN creates (or attaches to) the layer-3 TUN device name and returns
// it with the name the kernel gave it. IFF_NO_PI: every read returns one
// bare IP packet, every write takes one, with no packet-information prefix.
// The device vanishes when the file is closed unless it was made persistent
// beforehand (ip tuntap add).
func openTUN(name string) (*os.File, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("TUN device name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("creating TUN device %q (TUNSETIFF, needs CAP_NET_ADMIN): %w", name, err)
	}
	// Non-blocking before os.NewFile, so the file joins the runtime's poller:
	// reads park a goroutine instead of a thread, and Close wakes a reader
	// blocked in Read, which is how the pump is stopped.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("making the TUN device non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), ifr.Name(), nil
}

// pump carries packets between a packet device (the TUN) and the
// simulator. Every Read of dev must return exactly one IP packet, as a TUN
// device without packet information does.
type pump struct {
	dev  io.ReadWriter
	send func(inner []byte) error

	fromDev, sendErrors, toDev, writeErrors atomic.Uint64
}

// pumpStats are the pump's counters, printed beside the simulator's.
type pumpStats struct {
	FromDevice  uint64 `json:"from_device"`  // packets read from the device
	SendErrors  uint64 `json:"send_errors"`  // packets the simulator could not send (unparsable, socket errors)
	ToDevice    uint64 `json:"to_device"`    // replies written to the device
	WriteErrors uint64 `json:"write_errors"` // replies the device did not take
}

func (p *pump) stats() pumpStats {
	return pumpStats{
		FromDevice: p.fromDev.Load(), SendErrors: p.sendErrors.Load(),
		ToDevice: p.toDev.Load(), WriteErrors: p.writeErrors.Load(),
	}
}

// readLoop sends every packet read from the device through the simulator
// until the device is closed. One buffer serves every packet: send must not
// keep it (Endpoint.Send copies what it sends).
func (p *pump) readLoop() error {
	buf := make([]byte, 65535)
	for {
		n, err := p.dev.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading the TUN device: %w", err)
		}
		if n == 0 {
			continue
		}
		p.fromDev.Add(1)
		if err := p.send(buf[:n]); err != nil {
			// The kernel writes whatever it routes to the device (IPv6
			// router solicitations, say); one the simulator cannot carry is
			// counted, never fatal.
			if p.sendErrors.Add(1) == 1 {
				slog.Warn("gwlbsim: a packet from the TUN device could not be sent (further ones are only counted)", "err", err)
			} else {
				slog.Debug("gwlbsim: packet from the TUN device not sent", "err", err)
			}
		}
	}
}

// deliver writes a reply the simulator accepted to the device. It runs on
// the simulator's reply reader; inner is only valid during the call, and the
// write copies it into the kernel.
func (p *pump) deliver(inner []byte) {
	if _, err := p.dev.Write(inner); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return // shutting down: the device went first
		}
		if p.writeErrors.Add(1) == 1 {
			slog.Warn("gwlbsim: writing a reply to the TUN device (further failures are only counted)", "err", err)
		}
		return
	}
	p.toDev.Add(1)
}
