package memwatch

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestParseSockstatTCP(t *testing.T) {
	// A kernel's own, with UDP's mem after TCP's, which must not be taken.
	pages, err := ParseSockstatTCP([]byte("sockets: used 19\nTCP: inuse 5 orphan 0 tw 97 alloc 5 mem 110\nUDP: inuse 0 mem 181\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n"))
	if err != nil || pages != 110 {
		t.Errorf("ParseSockstatTCP = %d, %v; want 110", pages, err)
	}
	for _, bad := range []string{
		"",
		"sockets: used 1\nUDP: inuse 0 mem 181\n", // no TCP line
		"TCP: inuse 5 orphan 0 tw 97 alloc 5\n",   // no mem
		"TCP: inuse 5 orphan 0 tw 97 alloc 5 mem\n",
		"TCP: inuse 5 mem x\n",
		"TCP6: inuse 5 mem 3\n", // sockstat6's line is not the pool's
	} {
		if n, err := ParseSockstatTCP([]byte(bad)); err == nil {
			t.Errorf("ParseSockstatTCP(%q) = %d, nil; want an error", bad, n)
		}
	}
	// This machine's own, which Run reads.
	b, err := os.ReadFile(defaultSockstat)
	if err != nil {
		t.Skip(err)
	}
	if _, err := ParseSockstatTCP(b); err != nil {
		t.Errorf("%s: %v", defaultSockstat, err)
	}
}

func TestParseTCPMem(t *testing.T) {
	low, pressure, limit, err := ParseTCPMem([]byte("287907\t383879\t575814\n"))
	if err != nil || low != 287907 || pressure != 383879 || limit != 575814 {
		t.Errorf("ParseTCPMem = %d %d %d, %v", low, pressure, limit, err)
	}
	for _, bad := range []string{"", "1 2\n", "1 2 3 4\n", "1 x 3\n", "0 0 0\n", "-1 2 3\n"} {
		if a, b, c, err := ParseTCPMem([]byte(bad)); err == nil {
			t.Errorf("ParseTCPMem(%q) = %d %d %d, nil; want an error", bad, a, b, c)
		}
	}
	b, err := os.ReadFile(defaultTCPMem)
	if err != nil {
		t.Skip(err)
	}
	if _, p, m, err := ParseTCPMem(b); err != nil || p == 0 || m == 0 {
		t.Errorf("%s: pressure %d, max %d, %v", defaultTCPMem, p, m, err)
	}
}

// TestTCPLevel: the kernel's TCP memory alone makes memory short from
// tcp_mem's pressure and critical from 90% of its max, while the Go heap
// and the machine's available memory are ample; each level is left some way
// below, and the cause names the measure.
func TestTCPLevel(t *testing.T) {
	const gib = 1 << 30
	// A 4 GiB machine with the kernel's default tcp_mem (about 180, 240,
	// 360 MiB), its memory otherwise nearly all available.
	tcp := func(pages uint64) Sample {
		return Sample{InUse: 100 << 20, Limit: 3 * gib, Available: 3.5 * gib, Total: 4 * gib,
			TCPInUse: pages * 4096, TCPPressure: 61893 * 4096, TCPMax: 92838 * 4096}
	}
	tests := []struct {
		name  string
		s     Sample
		was   Level
		want  Level
		cause Cause
	}{
		{"at rest", tcp(110), Ample, Ample, NoCause},
		{"below pressure", tcp(61892), Ample, Ample, NoCause},
		{"at pressure", tcp(61893), Ample, Short, KernelTCPMemory},
		{"90% of pressure after short: stays", tcp(55704), Short, Short, KernelTCPMemory},
		{"84% of pressure after short: leaves", tcp(51990), Short, Ample, NoCause},
		{"90% of max", tcp(83555), Ample, Critical, KernelTCPMemory},
		{"85% of max after critical: stays", tcp(78912), Critical, Critical, KernelTCPMemory},
		{"79% of max after critical: short", tcp(73342), Critical, Short, KernelTCPMemory},
		{"max unknown: no news", Sample{TCPInUse: 1 << 40}, Ample, Ample, NoCause},
		{"pressure unknown: critical still", Sample{TCPInUse: 95, TCPMax: 100}, Ample, Critical, KernelTCPMemory},
		{"the worse measure wins", Sample{InUse: 7, Limit: 10, TCPInUse: 95, TCPMax: 100}, Ample, Critical, KernelTCPMemory},
		{"a tie goes to the first", Sample{InUse: 8, Limit: 10, TCPInUse: 95, TCPMax: 100}, Ample, Critical, GoMemory},
		{"the machine", Sample{Available: 4, Total: 100, TCPInUse: 60, TCPPressure: 50, TCPMax: 100}, Ample, Critical, AvailableMemory},
		{"the cgroup", Sample{CgroupAvailable: 9, CgroupTotal: 100}, Ample, Short, CgroupMemory},
	}
	for _, tt := range tests {
		if got, cause := tt.s.Assess(tt.was); got != tt.want || cause != tt.cause {
			t.Errorf("%s: %+v after %s = %s (%q), want %s (%q)", tt.name, tt.s, tt.was, got, cause, tt.want, tt.cause)
		}
	}
}

// TestRunKernelTCPMemory runs a watcher on sockstat and tcp_mem files the
// test rewrites, the machine's memory ample throughout: the kernel's TCP
// memory alone takes it to short and critical and back, and each report
// names it and carries its numbers in bytes.
func TestRunKernelTCPMemory(t *testing.T) {
	meminfo := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(meminfo, []byte("MemTotal: 4000000 kB\nMemAvailable: 3500000 kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tcp := ampleTCP(t)
	reports := runWatcher(t, meminfo, tcp)

	next := func(want Level, wantCause Cause, pages uint64) {
		t.Helper()
		select {
		case r := <-reports:
			if r.l != want || r.c != wantCause {
				t.Fatalf("report %s (%q), want %s (%q)", r.l, r.c, want, wantCause)
			}
			if page := uint64(os.Getpagesize()); r.s.TCPInUse != pages*page || r.s.TCPPressure != 61893*page || r.s.TCPMax != 92838*page {
				t.Errorf("TCP memory %d of %d/%d bytes, want %d pages of 61893/92838", r.s.TCPInUse, r.s.TCPPressure, r.s.TCPMax, pages)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no report within 10 s, want %s", want)
		}
	}
	next(Ample, NoCause, 110)
	tcp.write(t, 62000) // past pressure
	next(Short, KernelTCPMemory, 62000)
	tcp.write(t, 85000) // 91.6% of max
	next(Critical, KernelTCPMemory, 85000)
	tcp.write(t, 1000)
	next(Ample, NoCause, 1000)
}

// TestReadTCPUnreadable: where the files cannot be read the measure is
// left out (no news, never an alarm) and the rest still read.
func TestReadTCPUnreadable(t *testing.T) {
	dir := t.TempDir()
	meminfo := filepath.Join(dir, "meminfo")
	if err := os.WriteFile(meminfo, []byte("MemTotal: 4000000 kB\nMemAvailable: 3500000 kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tcp := ampleTCP(t)
	for _, w := range []*Watcher{
		{Meminfo: meminfo, Sockstat: filepath.Join(dir, "gone"), TCPMem: tcp.tcpMem},
		{Meminfo: meminfo, Sockstat: tcp.sockstat, TCPMem: filepath.Join(dir, "gone")},
	} {
		for range 2 { // the second read warns no more (by eye: -v)
			s := w.Read()
			if s.TCPInUse != 0 || s.TCPPressure != 0 || s.TCPMax != 0 || s.Total != 4000000<<10 {
				t.Errorf("%+v", s)
			}
			if l := s.Level(Ample); l != Ample {
				t.Errorf("unreadable TCP memory: %s, want ample", l)
			}
		}
	}
}

// TestRunCauseChangesAtTheSameLevel: memory is critical on the machine's
// available memory; the kernel's TCP memory then climbs past its critical
// threshold (91.6% of max) and MemAvailable recovers. The level stays
// critical, but the cause is now kernel_tcp_memory: Run reports it, with
// the new numbers. It used to report only a new level, so the cause (and
// the health reason) stayed "available memory low". Then TCP memory falls
// to 85% of max: critical by its own hysteresis (leaves below 80%), and a
// reading that, from ample, is only short is not held critical by the
// other measure's past level.
func TestRunCauseChangesAtTheSameLevel(t *testing.T) {
	meminfo := filepath.Join(t.TempDir(), "meminfo")
	writeMem := func(availKB int) {
		b := []byte("MemTotal: 4000000 kB\nMemAvailable: " + strconv.Itoa(availKB) + " kB\n")
		if err := os.WriteFile(meminfo+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(meminfo+".new", meminfo); err != nil {
			t.Fatal(err)
		}
	}
	writeMem(100000) // 2.5% available: critical
	tcp := ampleTCP(t)
	reports := runWatcher(t, meminfo, tcp)
	next := func(want Level, wantCause Cause) Sample {
		t.Helper()
		select {
		case r := <-reports:
			if r.l != want || r.c != wantCause {
				t.Fatalf("report %s (%q), want %s (%q)", r.l, r.c, want, wantCause)
			}
			return r.s
		case <-time.After(10 * time.Second):
			t.Fatalf("no report within 10 s, want %s (%q)", want, wantCause)
		}
		return Sample{}
	}
	next(Critical, AvailableMemory)
	tcp.write(t, 85000) // 91.6% of max: critical on its own
	time.Sleep(50 * time.Millisecond)
	writeMem(3500000) // 87.5% available
	if s := next(Critical, KernelTCPMemory); s.Available != 3500000<<10 {
		t.Errorf("the report carries %d bytes available, want the new reading", s.Available)
	}
	tcp.write(t, 79000) // 85% of max: held critical by the TCP measure's own hysteresis
	select {
	case r := <-reports:
		t.Fatalf("report %s (%q) while TCP memory stays above its leave threshold", r.l, r.c)
	case <-time.After(100 * time.Millisecond):
	}
	tcp.write(t, 70000) // 75% of max, past pressure: short
	next(Short, KernelTCPMemory)

	// Per measure: available memory's past critical does not hold the
	// TCP reading at 85% of max critical.
	page := uint64(os.Getpagesize())
	s := Sample{Available: 3500000 << 10, Total: 4000000 << 10, TCPInUse: 79000 * page, TCPPressure: 61893 * page, TCPMax: 92838 * page}
	each := Levels{AvailableMemory: Critical}
	if l, c := s.AssessEach(&each); l != Short || c != KernelTCPMemory {
		t.Errorf("after critical on available memory, TCP at 85%% of max: %s (%q), want short, as from ample", l, c)
	}
	if each[AvailableMemory] != Ample || each[KernelTCPMemory] != Short {
		t.Errorf("levels after: %v", each)
	}
}

// report is one call of a Watcher's Report.
type report struct {
	l Level
	c Cause
	s Sample
}

// runWatcher runs a watcher every 5 ms on meminfo and tcp's files until the
// test ends, and returns its reports.
func runWatcher(t *testing.T, meminfo string, tcp tcpFiles) <-chan report {
	t.Helper()
	reports := make(chan report, 16)
	w := &Watcher{Interval: 5 * time.Millisecond, Meminfo: meminfo, Sockstat: tcp.sockstat, TCPMem: tcp.tcpMem,
		Report: func(l Level, c Cause, s Sample) { reports <- report{l, c, s} }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return reports
}
