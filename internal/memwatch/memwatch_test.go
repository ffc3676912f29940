package memwatch

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestLevel(t *testing.T) {
	const gib = 1 << 30
	plenty := Sample{Available: 20 * gib, Total: 24 * gib}
	tests := []struct {
		name string
		s    Sample
		was  Level
		want Level
	}{
		{"nothing known", Sample{}, Ample, Ample},
		{"no limit, plenty available", Sample{InUse: 10 * gib, Available: 20 * gib, Total: 24 * gib}, Ample, Ample},
		{"half the limit", with(plenty, 5*gib, 10*gib), Ample, Ample},
		{"60% of the limit", with(plenty, 6*gib, 10*gib), Ample, Short},
		{"55% after short: stays", with(plenty, 5.5*gib, 10*gib), Short, Short},
		{"49% after short: leaves", with(plenty, 4.9*gib, 10*gib), Short, Ample},
		{"80% of the limit", with(plenty, 8*gib, 10*gib), Ample, Critical},
		{"75% after critical: stays", with(plenty, 7.5*gib, 10*gib), Critical, Critical},
		{"65% after critical: short", with(plenty, 6.5*gib, 10*gib), Critical, Short},
		{"40% after critical: ample", with(plenty, 4*gib, 10*gib), Critical, Ample},
		{"9% available", Sample{Available: 0.09 * 100 * gib, Total: 100 * gib}, Ample, Short},
		{"12% available after short: stays", Sample{Available: 12 * gib, Total: 100 * gib}, Short, Short},
		{"16% available after short: leaves", Sample{Available: 16 * gib, Total: 100 * gib}, Short, Ample},
		{"4% available", Sample{Available: 4 * gib, Total: 100 * gib}, Ample, Critical},
		{"6% available after critical: stays", Sample{Available: 6 * gib, Total: 100 * gib}, Critical, Critical},
		{"the worse measure wins", Sample{InUse: 1, Limit: 10, Available: 4 * gib, Total: 100 * gib}, Ample, Critical},
	}
	for _, tt := range tests {
		if got := tt.s.Level(tt.was); got != tt.want {
			t.Errorf("%s: %+v after %s = %s, want %s", tt.name, tt.s, tt.was, got, tt.want)
		}
	}
}

func with(s Sample, inUse, limit float64) Sample {
	s.InUse, s.Limit = uint64(inUse), uint64(limit)
	return s
}

func TestParseMeminfo(t *testing.T) {
	avail, total, err := ParseMeminfo([]byte("MemTotal:       24684096 kB\nMemFree:        23261952 kB\nMemAvailable:   24146740 kB\nBuffers:           20000 kB\n"))
	if err != nil || avail != 24146740<<10 || total != 24684096<<10 {
		t.Errorf("ParseMeminfo = %d, %d, %v", avail, total, err)
	}
	for _, bad := range []string{
		"",
		"MemTotal: 10 kB\n",                     // no MemAvailable (kernels before 3.14)
		"MemTotal: x kB\nMemAvailable: 1 kB\n",  // not a number
		"MemTotal: 10 MB\nMemAvailable: 1 kB\n", // not a unit meminfo uses
		"MemTotal: 18014398509481984 kB\nMemAvailable: 1 kB\n", // overflows in bytes
	} {
		if a, tot, err := ParseMeminfo([]byte(bad)); err == nil {
			t.Errorf("ParseMeminfo(%q) = %d, %d, nil; want an error", bad, a, tot)
		}
	}
	// This machine's own, which Run reads.
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Skip(err)
	}
	if avail, total, err := ParseMeminfo(b); err != nil || total == 0 || avail > total {
		t.Errorf("/proc/meminfo: available %d, total %d, %v", avail, total, err)
	}
}

// TestRunReportsChanges runs a watcher on a meminfo file the test rewrites:
// the first reading is reported, a change of level is reported, and
// readings that leave the level where it is are not.
func TestRunReportsChanges(t *testing.T) {
	file := filepath.Join(t.TempDir(), "meminfo")
	write := func(availKB int) {
		t.Helper()
		s := "MemTotal: 1000000 kB\nMemAvailable: " + strconv.Itoa(availKB) + " kB\n"
		if err := os.WriteFile(file+".new", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil { // never read half written
			t.Fatal(err)
		}
	}
	write(500000)
	reports := make(chan Level, 16)
	tcp := ampleTCP(t) // not this host's, which may be under pressure
	w := &Watcher{Interval: 5 * time.Millisecond, Meminfo: file, Sockstat: tcp.sockstat, TCPMem: tcp.tcpMem, Report: func(l Level, c Cause, s Sample) {
		if want := map[Level]Cause{Ample: NoCause, Short: AvailableMemory, Critical: AvailableMemory}[l]; c != want {
			t.Errorf("reported %s caused by %q, want %q", l, c, want)
		}
		if s.Total != 1000000<<10 {
			t.Errorf("reported a sample with total %d", s.Total)
		}
		reports <- l
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	next := func() Level {
		t.Helper()
		select {
		case l := <-reports:
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("no report within 10 s")
		}
		return -1
	}
	if l := next(); l != Ample {
		t.Fatalf("first report %s, want ample", l)
	}
	write(90000) // 9%
	if l := next(); l != Short {
		t.Fatalf("at 9%% available: %s, want short", l)
	}
	write(120000) // 12%: still short, nothing to report
	write(40000)  // 4%
	if l := next(); l != Critical {
		t.Fatalf("at 4%% available: %s, want critical", l)
	}
	write(900000)
	if l := next(); l != Ample {
		t.Fatalf("at 90%% available: %s, want ample", l)
	}
	select {
	case l := <-reports:
		t.Fatalf("a report without a change of level: %s", l)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestReadCgroup: inside a cgroup with a memory limit, the limit stands in
// for MemTotal, and the limit less what is charged (less inactive page
// cache, which the kernel reclaims first) for MemAvailable; v2 and v1
// files; no limit is no news.
func TestReadCgroup(t *testing.T) {
	write := func(dir string, files map[string]string) {
		t.Helper()
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	const mib = 1 << 20
	v2, v1, none := t.TempDir(), t.TempDir(), t.TempDir()
	write(v2, map[string]string{
		"memory.max":     "2147483648\n",
		"memory.current": strconv.Itoa(1960*mib) + "\n",
		"memory.stat":    "anon 1500000000\nfile 400000000\nkernel 1000\ninactive_file " + strconv.Itoa(100*mib) + "\nactive_file 2\n",
	})
	write(v1, map[string]string{
		"memory.limit_in_bytes": "1073741824\n",
		"memory.usage_in_bytes": strconv.Itoa(1000*mib) + "\n",
		"memory.stat":           "cache 1\nrss 2\ninactive_file 999999999\ntotal_inactive_file " + strconv.Itoa(24*mib) + "\n",
	})
	write(none, map[string]string{"memory.max": "max\n", "memory.current": "5\n", "memory.stat": "inactive_file 0\n"})
	machine := filepath.Join(t.TempDir(), "meminfo")
	writeMeminfo := func(availKB int) {
		t.Helper()
		if err := os.WriteFile(machine, []byte("MemTotal: 4000000 kB\nMemAvailable: "+strconv.Itoa(availKB)+" kB\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeMeminfo(3000000) // 75% available
	for _, tc := range []struct {
		name         string
		dir          string
		avail, total uint64
	}{
		{"v2", v2, 2048*mib - 1860*mib, 2048 * mib},
		{"v1", v1, 1024*mib - 976*mib, 1024 * mib},
		{"no limit", none, 0, 0},
		{"gone", filepath.Join(none, "gone"), 0, 0}, // no news, not an alarm
	} {
		w := &Watcher{Cgroup: tc.dir, Meminfo: machine}
		s := w.Read()
		if s.CgroupAvailable != tc.avail || s.CgroupTotal != tc.total {
			t.Errorf("%s: available %d MiB of %d MiB, want %d of %d", tc.name, s.CgroupAvailable/mib, s.CgroupTotal/mib, tc.avail/mib, tc.total/mib)
		}
		if s.Total != 4000000<<10 {
			t.Errorf("%s: the machine's total %d, want it read beside the cgroup's", tc.name, s.Total)
		}
	}
	// 188 MiB of 2 GiB left in the cgroup: under 10%, so short, though
	// the machine has room.
	if l := (&Watcher{Cgroup: v2, Meminfo: machine}).Read().Level(Ample); l != Short {
		t.Errorf("v2 cgroup with 188 MiB of 2 GiB left: %s, want short", l)
	}
	// The machine at 1% while the cgroup has room (other processes took
	// it): critical, the worse of the two.
	writeMeminfo(40000)
	if l := (&Watcher{Cgroup: none, Meminfo: machine}).Read().Level(Ample); l != Critical {
		t.Errorf("the machine at 1%% available, the cgroup unlimited: %s, want critical", l)
	}
	if l := (&Watcher{Cgroup: filepath.Join(none, "gone"), Meminfo: machine}).Read().Level(Ample); l != Critical {
		t.Errorf("the machine at 1%% available, the cgroup gone: %s, want critical", l)
	}
}

// tcpFiles are a sockstat and a tcp_mem file a test writes.
type tcpFiles struct{ sockstat, tcpMem string }

// ampleTCP writes the kernel's TCP memory files of a 4 GiB machine at rest.
func ampleTCP(t *testing.T) tcpFiles {
	t.Helper()
	dir := t.TempDir()
	f := tcpFiles{filepath.Join(dir, "sockstat"), filepath.Join(dir, "tcp_mem")}
	f.write(t, 110)
	if err := os.WriteFile(f.tcpMem, []byte("46419\t61893\t92838\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// write sets the TCP memory in use to pages, as the kernel shows it.
func (f tcpFiles) write(t *testing.T, pages int) {
	t.Helper()
	s := "sockets: used 19\nTCP: inuse 5 orphan 0 tw 97 alloc 5 mem " + strconv.Itoa(pages) +
		"\nUDP: inuse 0 mem 181\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n"
	if err := os.WriteFile(f.sockstat+".new", []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f.sockstat+".new", f.sockstat); err != nil { // never read half written
		t.Fatal(err)
	}
}
