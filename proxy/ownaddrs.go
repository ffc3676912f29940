package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ownAddrsRefresh is how often the host's addresses are read again whatever
// netlink says: the whole refresh where netlink is unavailable (a sandbox
// without NETLINK_ROUTE, where they are read from /proc instead:
// readProcAddrs), and a safety net where it is (an overrun subscription
// loses messages).
const ownAddrsRefresh = 30 * time.Second

// ownAddrs is the set of the host's own addresses, which are never a
// destination, kept up to date as they change: an address added after
// start (a secondary private IP, IPv6 turned on, a docker0 bridge) is
// refused as soon as the kernel announces it. The set is immutable and
// swapped whole, so a lookup takes no lock. Until the addresses have been
// read once the set is nil, and every destination is refused (known): an
// empty set would let clients reach the appliance's own services.
type ownAddrs struct {
	set  atomic.Pointer[map[netip.Addr]struct{}]
	nl   *os.File // the netlink subscription; nil without one
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// watchOwnAddrs reads the host's addresses and keeps reading them: on every
// message of a netlink subscription to address and link changes (when
// subscribe is set and the kernel allows it), and every interval.
func watchOwnAddrs(interval time.Duration, subscribe bool) *ownAddrs {
	o := &ownAddrs{stop: make(chan struct{})}
	var changed chan struct{}
	if subscribe {
		f, err := subscribeAddrChanges()
		if err != nil {
			slog.Warn("no netlink subscription to the host's address changes: the appliance's own addresses are re-read every "+interval.String()+" instead (from /proc if netlink is refused), so one added meanwhile is reachable by clients until then",
				"err", err)
		} else {
			o.nl, changed = f, make(chan struct{}, 1)
			o.wg.Go(func() { o.readNetlink(changed) })
		}
	}
	// Subscribed first, read second: a change in between is not missed.
	o.refresh()
	o.wg.Go(func() { o.run(interval, changed) })
	return o
}

// subscribeAddrChanges opens a NETLINK_ROUTE socket bound to the groups of
// IPv4 and IPv6 address changes and of link changes. It is non-blocking,
// so the runtime's poller waits on it and closing it ends a read.
func subscribeAddrChanges() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_LINK}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	return os.NewFile(uintptr(fd), "netlink-route"), nil
}

// readNetlink signals changed for every message on the subscription. The
// messages are not parsed: any of them means the set is read again whole,
// which is simple and cannot get out of step.
func (o *ownAddrs) readNetlink(changed chan<- struct{}) {
	buf := make([]byte, 64<<10)
	for {
		_, err := o.nl.Read(buf)
		switch {
		case err == nil, errors.Is(err, syscall.ENOBUFS):
			// ENOBUFS: messages were lost to an overrun; read them all anew.
			select {
			case changed <- struct{}{}:
			default: // a refresh is due already
			}
		case errors.Is(err, os.ErrClosed):
			return
		default:
			slog.Warn("reading netlink address changes: the appliance's own addresses are re-read every "+ownAddrsRefresh.String()+" only, so one added meanwhile is reachable by clients until then",
				"err", err)
			return
		}
	}
}

func (o *ownAddrs) run(interval time.Duration, changed <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
		case <-changed:
		}
		o.refresh()
	}
}

// refresh reads the host's addresses and publishes them: through netlink
// (net.InterfaceAddrs), or from /proc where netlink is refused. If neither
// can be read, the last set stays; if there is none yet, every destination
// stays refused.
func (o *ownAddrs) refresh() {
	m, err := interfaceAddrs()
	if err != nil {
		var perr error
		if m, perr = readProcAddrs(); perr != nil {
			if o.set.Load() == nil {
				slog.Error("the host's addresses cannot be read: every destination is refused until they can be, or clients could reach the appliance's own services",
					"err", err, "proc_err", perr)
			} else {
				slog.Warn("the host's addresses cannot be read: the last ones read are still refused, but not one added since",
					"err", err, "proc_err", perr)
			}
			return
		}
	}
	o.set.Store(&m)
}

// interfaceAddrs reads the host's addresses through netlink.
func interfaceAddrs() (map[netip.Addr]struct{}, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("reading the host's addresses: %w", err)
	}
	m := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil {
			m[pfx.Addr().Unmap()] = struct{}{}
		}
	}
	return m, nil
}

// known reports whether the host's addresses have been read at all.
func (o *ownAddrs) known() bool { return o.set.Load() != nil }

// has reports whether a is one of the host's addresses (false while they
// are not known).
func (o *ownAddrs) has(a netip.Addr) bool {
	m := o.set.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[a]
	return ok
}

// OwnAddrsKnown reports whether the host's own addresses have been read at
// least once. Until they have, every TCP, UDP and echo flow is refused
// (forbidden), so the appliance is of no use to its clients: its health
// check reports it broken, for the GWLB to send flows to another target.
func (p *Proxy) OwnAddrsKnown() bool { return p.own.known() }

// close stops following the addresses; the last set stays readable.
func (o *ownAddrs) close() {
	o.once.Do(func() {
		close(o.stop)
		if o.nl != nil {
			o.nl.Close()
		}
	})
	o.wg.Wait()
}

// Close stops what the proxy runs besides its flows: following the host's
// addresses, and keeping sockets made ahead for dials. It ends the ICMP
// echo flows, whose ping sockets closing the packet stack does not touch,
// so that their records are written at once; new echo flows are dropped.
// TCP and UDP flows in progress are not affected (closing the stack ends
// them), and the addresses known last are still refused. Failed dials'
// records held for their clients' buckets are written at once.
func (p *Proxy) Close() {
	p.echo.close()
	p.own.close()
	p.dialer.Close()
	p.flushDialOwedAll()
}
