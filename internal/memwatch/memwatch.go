// Package memwatch tells the data plane when memory runs short, so that it
// can refuse new flows before the kernel's OOM killer ends every flow at
// once.
//
// Flows are admitted by count (--max-flows, --max-flows-per-client), and a
// count is a poor measure of memory: an idle relayed flow costs about 30 KB
// (Go memory and the kernel's socket), an idle bumped TLS connection about
// 50 KB, one moving data hundreds. A hostile client holding its tenth of the
// default table, 100,000 idle TLS connections, needs about 5 GB: more than a
// 4 GiB instance has. Nothing short of memory itself bounds that.
//
// Two measures, read every Interval: the Go memory in use after the last
// collection (the live heap and goroutine stacks) against the runtime's
// soft limit (--memory-limit), and the memory the kernel says is available
// (MemAvailable) against the machine's total, which covers the kernel's
// socket memory that the Go limit does not; inside a cgroup with a memory
// limit (Watcher.Cgroup), also what is left under that limit against it,
// since the kernel kills the process there; the worse of the two counts.
// And the kernel's TCP memory (/proc/net/sockstat) against its own limits
// (net.ipv4.tcp_mem): a pool for the whole host that a few dozen stalled
// flows can fill while MemAvailable shows plenty (tcpmem.go). The worst
// measure sets the level, and the Cause names it.
// Each has two thresholds: past the first memory is Short, past the second
// Critical; a level is left only some way below its threshold, so that it
// does not flap.
package memwatch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"time"
)

// Level is how short of memory the process is.
type Level int32

// Levels, in order of need.
const (
	// Ample: new flows are admitted as usual.
	Ample Level = iota
	// Short: only clients holding few flows should get new ones.
	Short
	// Critical: nobody should get new flows.
	Critical
)

// String names the level as logs and /stats show it.
func (l Level) String() string {
	switch l {
	case Ample:
		return "ample"
	case Short:
		return "short"
	case Critical:
		return "critical"
	}
	return "level(" + strconv.Itoa(int(l)) + ")"
}

// Thresholds. Go memory in use is compared with the soft limit, which the
// appliance sets to 90% of the instance's memory by default: at 60% of it
// the collector still has room for the garbage of the flows that exist
// (with GOGC=100 the heap grows to twice the live heap between collections,
// the limit capping it), and the kernel for their sockets. Available memory
// is compared with the machine's total.
const (
	shortLive          = 0.60 // of the limit: Short from here
	shortLiveLeave     = 0.50
	criticalLive       = 0.80 // of the limit: Critical from here
	criticalLiveLeave  = 0.70
	shortAvail         = 0.10 // of the total: Short below this
	shortAvailLeave    = 0.15
	criticalAvail      = 0.05 // of the total: Critical below this
	criticalAvailLeave = 0.075
)

// DefaultInterval is how often memory is read: often enough that a burst
// of new flows is cut off within a fraction of a second, seldom enough to
// cost nothing (a few microseconds a read).
const DefaultInterval = 250 * time.Millisecond

// Sample is one reading of memory.
type Sample struct {
	// InUse is the Go memory in use after the last collection: the live
	// heap and goroutine stacks, in bytes.
	InUse uint64
	// Limit is the Go runtime's soft memory limit; 0 when none is set.
	Limit uint64
	// Available and Total are the kernel's MemAvailable and MemTotal in
	// bytes; 0 when unknown.
	Available, Total uint64
	// CgroupAvailable and CgroupTotal are what is left under the binding
	// cgroup's memory limit, and the limit (Watcher.Cgroup); 0 when there
	// is none or it cannot be read.
	CgroupAvailable, CgroupTotal uint64
	// TCPInUse is the memory the kernel's TCP sockets hold, host wide;
	// TCPPressure and TCPMax are net.ipv4.tcp_mem's pressure and max
	// thresholds; all in bytes, 0 when unknown.
	TCPInUse, TCPPressure, TCPMax uint64
}

// Cause is the measure that set a level.
type Cause int32

// Causes, as Sample.Assess names them.
const (
	// NoCause: memory is ample.
	NoCause Cause = iota
	// GoMemory: the Go memory in use against the soft limit.
	GoMemory
	// AvailableMemory: the machine's MemAvailable against MemTotal.
	AvailableMemory
	// CgroupMemory: what is left under the cgroup's limit against it.
	CgroupMemory
	// KernelTCPMemory: the kernel's TCP memory against tcp_mem.
	KernelTCPMemory
)

// String names the cause as logs and /stats show it.
func (c Cause) String() string {
	switch c {
	case NoCause:
		return ""
	case GoMemory:
		return "go_memory"
	case AvailableMemory:
		return "available_memory"
	case CgroupMemory:
		return "cgroup_memory"
	case KernelTCPMemory:
		return "kernel_tcp_memory"
	}
	return "cause(" + strconv.Itoa(int(c)) + ")"
}

// numCauses bounds the Cause values.
const numCauses = KernelTCPMemory + 1

// Levels holds each measure's last level, indexed by its Cause (NoCause's
// entry unused): each measure leaves a level at its own leave threshold
// only when it was the one at that level. The zero value is all Ample.
type Levels [numCauses]Level

// Level returns the level s shows, given that the last one was was.
func (s Sample) Level(was Level) Level {
	l, _ := s.Assess(was)
	return l
}

// Assess returns the level s shows, given that every measure's last level
// was was, and the measure that shows it: see AssessEach.
func (s Sample) Assess(was Level) (Level, Cause) {
	var each Levels
	for i := range each {
		each[i] = was
	}
	return s.AssessEach(&each)
}

// AssessEach returns the level s shows and the measure that shows it: the
// worst counts (the first of them, in the order of Cause, when several
// show the same). each holds every measure's last level, which sets its
// thresholds, and is updated to the levels s shows.
func (s Sample) AssessEach(each *Levels) (Level, Cause) {
	// Each threshold is crossed at its own value going up and at its
	// leave value coming down: the level a measure holds stays until that
	// measure is clearly back. Per measure: another measure's reading
	// must not keep a level that this one alone never reached.
	level, cause := Ample, NoCause
	worse := func(l Level, c Cause) {
		each[c] = l
		if l > level {
			level, cause = l, c
		}
	}
	if s.Limit > 0 {
		live := float64(s.InUse) / float64(s.Limit)
		critical, short := criticalLive, shortLive
		was := each[GoMemory]
		if was >= Critical {
			critical = criticalLiveLeave
		}
		if was >= Short {
			short = shortLiveLeave
		}
		switch {
		case live >= critical:
			worse(Critical, GoMemory)
		case live >= short:
			worse(Short, GoMemory)
		default:
			worse(Ample, GoMemory)
		}
	} else {
		worse(Ample, GoMemory)
	}
	// The machine and the cgroup can each run out while the other has
	// room: the worse counts.
	if s.Total > 0 {
		worse(availLevel(float64(s.Available)/float64(s.Total), each[AvailableMemory]), AvailableMemory)
	} else {
		worse(Ample, AvailableMemory)
	}
	if s.CgroupTotal > 0 {
		worse(availLevel(float64(s.CgroupAvailable)/float64(s.CgroupTotal), each[CgroupMemory]), CgroupMemory)
	} else {
		worse(Ample, CgroupMemory)
	}
	worse(s.tcpLevel(each[KernelTCPMemory]), KernelTCPMemory)
	return level, cause
}

// availLevel is the level a share of memory available shows, given that
// the last level was was.
func availLevel(avail float64, was Level) Level {
	critical, short := criticalAvail, shortAvail
	if was >= Critical {
		critical = criticalAvailLeave
	}
	if was >= Short {
		short = shortAvailLeave
	}
	switch {
	case avail < critical:
		return Critical
	case avail < short:
		return Short
	}
	return Ample
}

// Watcher reads memory every Interval and reports each change of level or
// of the measure that sets it.
type Watcher struct {
	// Interval is the time between readings; 0: DefaultInterval.
	Interval time.Duration
	// Meminfo is the file MemAvailable and MemTotal are read from;
	// "": /proc/meminfo.
	Meminfo string
	// Cgroup, when set, is the directory of the cgroup whose memory limit
	// binds the process (v2: memory.max; v1: memory.limit_in_bytes): what
	// is left under that limit is read too, since the kernel kills the
	// process there while the machine may have room (and the machine may
	// run out while the cgroup has room: the worse counts). cgroup v2
	// charges socket buffers to the cgroup; v1 charges them only to
	// kmem.tcp, when a TCP limit is set, so there the machine's
	// MemAvailable is what sees them.
	Cgroup string
	// Sockstat and TCPMem are the files the kernel's TCP memory in use and
	// its limits are read from; "": /proc/net/sockstat and
	// /proc/sys/net/ipv4/tcp_mem. Where they cannot be read (not Linux, a
	// sandbox) the measure is left out, with one warning.
	Sockstat, TCPMem string
	// Report is called with each new level or new cause, the measure that
	// set it and the sample that showed it, and once at the start with the
	// first reading. It must not block.
	Report func(Level, Cause, Sample)
	// Observe, when set, is called with every reading, reported or not
	// (for /stats). It must not block.
	Observe func(Sample)

	samples                        []metrics.Sample
	buf                            []byte
	warnedM, warnedCgrp, warnedTCP bool // that a measure could not be read
}

// Run reads memory until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	every := w.Interval
	if every <= 0 {
		every = DefaultInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	level, cause := Level(-1), NoCause // the first reading is always reported
	var each Levels
	for {
		s := w.Read()
		if w.Observe != nil {
			w.Observe(s)
		}
		// A new cause at the same level is reported too: the cause and
		// the numbers shown with it would be stale otherwise.
		if l, c := s.AssessEach(&each); l != level || c != cause {
			level, cause = l, c
			w.Report(l, c, s)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Read takes a sample now. A measure that cannot be read is left 0, which
// Level takes as no news: it never makes memory look short.
func (w *Watcher) Read() Sample {
	if w.samples == nil {
		w.samples = []metrics.Sample{
			{Name: "/gc/heap/live:bytes"},
			{Name: "/memory/classes/heap/stacks:bytes"},
		}
	}
	metrics.Read(w.samples)
	var s Sample
	for _, m := range w.samples {
		if m.Value.Kind() == metrics.KindUint64 {
			s.InUse += m.Value.Uint64()
		}
	}
	if l := debug.SetMemoryLimit(-1); l > 0 && l < math.MaxInt64 {
		s.Limit = uint64(l)
	}
	file := w.Meminfo
	if file == "" {
		file = "/proc/meminfo"
	}
	var err error
	if s.Available, s.Total, err = w.readMeminfo(file); err != nil && !w.warnedM {
		w.warnedM = true
		slog.Warn("the memory watch cannot read the machine's available memory", "err", err)
	}
	if s.TCPInUse, s.TCPPressure, s.TCPMax, err = w.readTCP(); err != nil && !w.warnedTCP {
		w.warnedTCP = true
		slog.Warn("the memory watch cannot read the kernel's TCP memory: the host's TCP buffers are watched only through the machine's available memory", "err", err)
	}
	if w.Cgroup == "" {
		return s
	}
	if s.CgroupAvailable, s.CgroupTotal, err = w.readCgroup(w.Cgroup); err != nil && !w.warnedCgrp {
		w.warnedCgrp = true
		slog.Warn("the memory watch cannot read its cgroup's memory: the machine's is watched instead", "err", err)
	}
	return s
}

// readCgroup returns what is left under the cgroup dir's memory limit and
// the limit: the limit less what is charged to the cgroup, less the
// inactive page cache, which the kernel reclaims before it kills (a little
// less than MemAvailable counts as reclaimable: this errs towards short).
// Without a limit there, both are 0: no news.
func (w *Watcher) readCgroup(dir string) (avail, total uint64, err error) {
	limitFile, usageFile, inactiveKey := "memory.max", "memory.current", "inactive_file"
	if _, err := os.Stat(filepath.Join(dir, limitFile)); err != nil {
		limitFile, usageFile, inactiveKey = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file" // v1
		if _, err := os.Stat(filepath.Join(dir, limitFile)); err != nil {
			return 0, 0, fmt.Errorf("%s: no memory.max (v2) or memory.limit_in_bytes (v1): %w", dir, err)
		}
	}
	limit, err := w.readNumber(filepath.Join(dir, limitFile))
	if err != nil || limit == 0 || limit >= 1<<62 { // v1 writes "none" as a huge number
		return 0, 0, err
	}
	usage, err := w.readNumber(filepath.Join(dir, usageFile))
	if err != nil {
		return 0, 0, err
	}
	inactive, err := w.readStat(filepath.Join(dir, "memory.stat"), inactiveKey)
	if err != nil {
		return 0, 0, err
	}
	used := usage - min(inactive, usage)
	return limit - min(used, limit), limit, nil
}

// readNumber reads a file holding one number, or "max" (read as 0).
func (w *Watcher) readNumber(file string) (uint64, error) {
	b, err := w.read(file)
	if err != nil {
		return 0, err
	}
	v := bytes.TrimSpace(b)
	if string(v) == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return n, nil
}

// readStat reads key's value from a memory.stat file ("key value" lines).
func (w *Watcher) readStat(file, key string) (uint64, error) {
	b, err := w.read(file)
	if err != nil {
		return 0, err
	}
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		if k, v, ok := bytes.Cut(line, []byte(" ")); ok && string(k) == key {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %s: %w", file, key, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s: no %s", file, key)
}

// read reads file into the watcher's buffer (8 KiB: memory.stat's size).
func (w *Watcher) read(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if len(w.buf) < 8<<10 {
		w.buf = make([]byte, 8<<10)
	}
	n, err := io.ReadFull(f, w.buf)
	if err != nil && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	return w.buf[:n], nil
}

// readMeminfo returns MemAvailable and MemTotal from file, in bytes.
func (w *Watcher) readMeminfo(file string) (avail, total uint64, err error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	if len(w.buf) < 8<<10 {
		w.buf = make([]byte, 8<<10)
	}
	n, err := f.Read(w.buf) // the two lines come first; one read holds them
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s: %w", file, err)
	}
	avail, total, err = ParseMeminfo(w.buf[:n])
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", file, err)
	}
	return avail, total, nil
}

// ParseMeminfo returns MemAvailable and MemTotal, in bytes, from the text
// of /proc/meminfo ("MemTotal:       24684096 kB" lines). Both must be there.
func ParseMeminfo(b []byte) (avail, total uint64, err error) {
	var haveAvail, haveTotal bool
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		key, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var dst *uint64
		switch string(key) {
		case "MemAvailable":
			dst, haveAvail = &avail, true
		case "MemTotal":
			dst, haveTotal = &total, true
		default:
			continue
		}
		num, unit, _ := bytes.Cut(bytes.TrimSpace(rest), []byte(" "))
		v, err := strconv.ParseUint(string(num), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", key, err)
		}
		switch string(unit) {
		case "kB":
			if v > math.MaxUint64>>10 {
				return 0, 0, fmt.Errorf("%s: %d kB is out of range", key, v)
			}
			v <<= 10
		case "":
		default:
			return 0, 0, fmt.Errorf("%s: unknown unit %q", key, unit)
		}
		*dst = v
	}
	if !haveAvail || !haveTotal {
		return 0, 0, fmt.Errorf("no MemAvailable or no MemTotal line")
	}
	return avail, total, nil
}
