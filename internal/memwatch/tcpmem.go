package memwatch

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// The kernel's TCP memory is one pool for the whole host: every TCP
// socket's send and receive queues, charged in pages to one count
// (/proc/net/sockstat's "TCP: ... mem N") that the kernel holds against
// net.ipv4.tcp_mem's three limits (min, pressure, max). Past pressure it
// stops growing sockets' buffers; at max every socket is held to its
// minimal buffers and segments are dropped, so every client's flows crawl.
// The appliance's host sockets keep the kernel's self-tuned buffers, and a
// relayed flow stalled both ways holds about 6.6 MiB in them: by default max
// is about 9.4% of the machine's memory (376 MiB on 4 GiB), which a few
// dozen such flows of one client reach while MemAvailable still shows the
// machine nearly empty. So the pool is watched as a measure of its own:
// Short from pressure, Critical near max.
const (
	shortTCP         = 1.00 // of tcp_mem's pressure: Short from here
	shortTCPLeave    = 0.85
	criticalTCP      = 0.90 // of tcp_mem's max: Critical from here
	criticalTCPLeave = 0.80
)

// Default files the kernel's TCP memory is read from.
const (
	defaultSockstat = "/proc/net/sockstat"
	defaultTCPMem   = "/proc/sys/net/ipv4/tcp_mem"
)

// pageSize is the unit of sockstat's TCP mem and of tcp_mem.
var pageSize = uint64(os.Getpagesize())

// readTCP returns the kernel's TCP memory in use, and tcp_mem's pressure
// and max thresholds, in bytes. It reads into the watcher's buffer, so a
// tick allocates nothing for it beyond opening the two files.
func (w *Watcher) readTCP() (inUse, pressure, limit uint64, err error) {
	sockstat, tcpMem := w.Sockstat, w.TCPMem
	if sockstat == "" {
		sockstat = defaultSockstat
	}
	if tcpMem == "" {
		tcpMem = defaultTCPMem
	}
	b, err := w.read(tcpMem)
	if err != nil {
		return 0, 0, 0, err
	}
	_, pressure, limit, err = ParseTCPMem(b)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("%s: %w", tcpMem, err)
	}
	if b, err = w.read(sockstat); err != nil {
		return 0, 0, 0, err
	}
	if inUse, err = ParseSockstatTCP(b); err != nil {
		return 0, 0, 0, fmt.Errorf("%s: %w", sockstat, err)
	}
	return inUse * pageSize, pressure * pageSize, limit * pageSize, nil
}

// ParseSockstatTCP returns the pages the kernel's TCP sockets hold, host
// wide, from the text of /proc/net/sockstat: the "mem" field of its "TCP:"
// line ("TCP: inuse 5 orphan 0 tw 97 alloc 5 mem 110").
func ParseSockstatTCP(b []byte) (pages uint64, err error) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		rest, ok := bytes.CutPrefix(line, []byte("TCP:"))
		if !ok {
			continue
		}
		// Name and value pairs, one space apart.
		for f := rest; len(f) > 0; {
			var name, value []byte
			name, f = nextField(f)
			value, f = nextField(f)
			if string(name) != "mem" {
				continue
			}
			n, err := strconv.ParseUint(string(value), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("TCP mem: %w", err)
			}
			return n, nil
		}
		return 0, fmt.Errorf("no mem on the TCP line")
	}
	return 0, fmt.Errorf("no TCP line")
}

// ParseTCPMem returns net.ipv4.tcp_mem's three limits, in pages, from the
// text of /proc/sys/net/ipv4/tcp_mem ("287907\t383879\t575814\n"). Max
// must not be 0 (the kernel does not hold them in order, nor does this).
func ParseTCPMem(b []byte) (low, pressure, limit uint64, err error) {
	var v [3]uint64
	for i := range v {
		var f []byte
		if f, b = nextField(b); len(f) == 0 {
			return 0, 0, 0, fmt.Errorf("%d numbers, want 3", i)
		}
		if v[i], err = strconv.ParseUint(string(f), 10, 64); err != nil {
			return 0, 0, 0, fmt.Errorf("tcp_mem: %w", err)
		}
	}
	if f, _ := nextField(b); len(f) > 0 {
		return 0, 0, 0, fmt.Errorf("more than 3 numbers")
	}
	if v[2] == 0 {
		return 0, 0, 0, fmt.Errorf("a max of 0")
	}
	return v[0], v[1], v[2], nil
}

// nextField returns b's first field (split on spaces, tabs and newlines)
// and what follows it, without allocating as bytes.Fields would.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	return b[i:j], b[j:]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// tcpLevel is the level the kernel's TCP memory shows, given that the last
// level was was; Ample when it is not known.
func (s Sample) tcpLevel(was Level) Level {
	if s.TCPMax == 0 {
		return Ample
	}
	critical, short := criticalTCP, shortTCP
	if was >= Critical {
		critical = criticalTCPLeave
	}
	if was >= Short {
		short = shortTCPLeave
	}
	switch {
	case float64(s.TCPInUse) >= critical*float64(s.TCPMax):
		return Critical
	case s.TCPPressure > 0 && float64(s.TCPInUse) >= short*float64(s.TCPPressure):
		return Short
	}
	return Ample
}
