package main

import (
	"bytes"
	"log/slog"
	"math"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"testing/fstest"
)

func TestParseMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		in      string
		kind    memoryLimitKind
		bytes   int64
		percent float64
	}{
		{"auto", memoryLimitAuto, 0, 0},
		{"AUTO", memoryLimitAuto, 0, 0},
		{"off", memoryLimitOff, 0, 0},
		{"Off", memoryLimitOff, 0, 0},
		{"1536MiB", memoryLimitBytes, 1536 << 20, 0},
		{"2GiB", memoryLimitBytes, 2 << 30, 0},
		{" 2GiB ", memoryLimitBytes, 2 << 30, 0},
		{"2 GiB", memoryLimitBytes, 2 << 30, 0},
		{"64KiB", memoryLimitBytes, 64 << 10, 0},
		{"1TiB", memoryLimitBytes, 1 << 40, 0},
		{"2G", memoryLimitBytes, 2_000_000_000, 0},
		{"500M", memoryLimitBytes, 500_000_000, 0},
		{"3K", memoryLimitBytes, 3000, 0},
		{"1T", memoryLimitBytes, 1_000_000_000_000, 0},
		{"4096B", memoryLimitBytes, 4096, 0},
		{"1048576", memoryLimitBytes, 1048576, 0},
		{"1", memoryLimitBytes, 1, 0},
		{"8388607TiB", memoryLimitBytes, 8388607 << 40, 0},
		{"9223372036854775807", memoryLimitBytes, math.MaxInt64, 0},
		{"90%", memoryLimitPercent, 0, 90},
		{"100%", memoryLimitPercent, 0, 100},
		{"12.5%", memoryLimitPercent, 0, 12.5},
		{"0.5 %", memoryLimitPercent, 0, 0.5},
	} {
		m, err := parseMemoryLimit(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if m.kind != tc.kind || m.bytes != tc.bytes || m.percent != tc.percent || m.set {
			t.Errorf("%q: kind %d, %d bytes, %v%%, set %v; want kind %d, %d bytes, %v%%", tc.in, m.kind, m.bytes, m.percent, m.set, tc.kind, tc.bytes, tc.percent)
		}
	}

	for _, tc := range []struct{ in, want string }{
		{"", "want a whole number"},
		{"   ", "want a whole number"},
		{"0", "more than 0"},
		{"0GiB", "more than 0"},
		{"-1G", "more than 0"},
		{"-5", "more than 0"},
		{"1.5GiB", "whole number"},
		{"2gb", `unknown unit "gb"`},
		{"2GB", `unknown unit "GB"`},
		{"2Gi", `unknown unit "Gi"`},
		{"2 kib", `unknown unit "kib"`},
		{"1e9", `unknown unit "e9"`},
		{"GiB", "want a whole number"},
		{"lots", `unknown unit "lots"`},
		{"max", `unknown unit "max"`},
		{"8388608TiB", "too large"},
		{"9223372036854775808", "too large"},
		{"0%", "more than 0 and at most 100"},
		{"0.0%", "more than 0 and at most 100"},
		{"-10%", "more than 0 and at most 100"},
		{"101%", "more than 0 and at most 100"},
		{"100.1%", "more than 0 and at most 100"},
		{"%", "more than 0 and at most 100"},
		{"nan%", "more than 0 and at most 100"},
		{"inf%", "more than 0 and at most 100"},
		{"1e2%", "more than 0 and at most 100"},
		{"1.2.3%", "invalid syntax"},
		{"bogus", "or auto, off, or a percentage"},
		{"auto%", "more than 0 and at most 100"},
	} {
		m, err := parseMemoryLimit(tc.in)
		if err == nil {
			t.Errorf("%q: accepted as %+v", tc.in, m)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q lacks %q", tc.in, err, tc.want)
		}
	}
}

// TestMemoryLimitFlag: --memory-limit defaults to auto, not given; a value
// given is parsed and marked given; a bad one stops start-up naming the flag;
// --help says what auto is.
func TestMemoryLimitFlag(t *testing.T) {
	_, p, err := parseArgs(nil, &bytes.Buffer{})
	m := p.memLimit
	if err != nil || m.kind != memoryLimitAuto || m.set {
		t.Fatalf("default: %+v, %v; want auto, not set", m, err)
	}
	_, p, err = parseArgs([]string{"--memory-limit", "1536MiB"}, &bytes.Buffer{})
	m = p.memLimit
	if err != nil || m.kind != memoryLimitBytes || m.bytes != 1536<<20 || !m.set {
		t.Fatalf("--memory-limit 1536MiB: %+v, %v", m, err)
	}
	_, p, err = parseArgs([]string{"--memory-limit", "auto"}, &bytes.Buffer{})
	m = p.memLimit
	if err != nil || m.kind != memoryLimitAuto || !m.set {
		t.Fatalf("--memory-limit auto: %+v, %v; want auto, set", m, err)
	}
	for _, v := range []string{"0", "-1GiB", "150%", "2gb", "bogus"} {
		err := runMain([]string{"--memory-limit", v}, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "memory-limit") {
			t.Errorf("--memory-limit %s: error %v, want one naming the flag", v, err)
		}
	}
	var help bytes.Buffer
	parseArgs([]string{"--help"}, &help)
	if !strings.Contains(help.String(), "auto is 90% of the memory available") || !strings.Contains(help.String(), "(default auto)") {
		t.Errorf("--help does not say what auto is:\n%s", help.String())
	}
}

const (
	gib         = int64(1) << 30
	meminfo16G  = "MemTotal:       16777216 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
	meminfo8G   = "MemTotal:        8388608 kB\nMemFree:         1000000 kB\n"
	cgroupV2Svc = "0::/system.slice/gwlbproxy.service\n"
	cgroupV1    = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n"
)

// fakeRoot writes files (path from the root: contents) under a temporary
// directory and returns it as the filesystem detectMemory reads.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestDetectMemory(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  map[string]string
		want   int64
		source string // a part of it
		err    string // a part of the error, when one is wanted
	}{
		{
			name: "cgroup v2 limit",
			files: map[string]string{
				"proc/self/cgroup": cgroupV2Svc,
				"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": "2147483648\n",
				"sys/fs/cgroup/system.slice/memory.max":                   "max\n",
				"proc/meminfo":                                            meminfo16G,
			},
			want: 2 * gib, source: "/sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max",
		},
		{
			name: "cgroup v2 max",
			files: map[string]string{
				"proc/self/cgroup": cgroupV2Svc,
				"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": "max\n",
				"sys/fs/cgroup/system.slice/memory.max":                   "max\n",
				"proc/meminfo":                                            meminfo16G,
			},
			want: 16 * gib, source: "MemTotal",
		},
		{
			name: "cgroup v2 limit on the parent slice",
			files: map[string]string{
				"proc/self/cgroup": cgroupV2Svc,
				"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": "max\n",
				"sys/fs/cgroup/system.slice/memory.max":                   "1073741824\n",
				"proc/meminfo":                                            meminfo16G,
			},
			want: gib, source: "/sys/fs/cgroup/system.slice/memory.max",
		},
		{
			name: "cgroup v2 in a cgroup namespace",
			files: map[string]string{
				"proc/self/cgroup":         "0::/\n",
				"sys/fs/cgroup/memory.max": "3221225472\n",
				"proc/meminfo":             meminfo16G,
			},
			want: 3 * gib, source: "/sys/fs/cgroup/memory.max",
		},
		{
			name: "cgroup v2, the host's path, only the container's cgroup mounted",
			files: map[string]string{
				"proc/self/cgroup":         "0::/docker/abc\n",
				"sys/fs/cgroup/memory.max": "3221225472\n",
				"proc/meminfo":             meminfo16G,
			},
			want: 3 * gib, source: "/sys/fs/cgroup/memory.max",
		},
		{
			name: "cgroup v1 limit",
			files: map[string]string{
				"proc/self/cgroup": cgroupV1,
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "1073741824\n",
				"sys/fs/cgroup/memory/docker/memory.limit_in_bytes":     "9223372036854771712\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n",
				"proc/meminfo": meminfo16G,
			},
			want: gib, source: "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
		},
		{
			name: "cgroup v1, memory among other controllers",
			files: map[string]string{
				"proc/self/cgroup": "4:cpu,memory:/job\n",
				"sys/fs/cgroup/memory/job/memory.limit_in_bytes": "536870912\n",
				"proc/meminfo": meminfo16G,
			},
			want: gib / 2, source: "/sys/fs/cgroup/memory/job/memory.limit_in_bytes",
		},
		{
			name: "cgroup v1 unlimited",
			files: map[string]string{
				"proc/self/cgroup": cgroupV1,
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n",
				"proc/meminfo": meminfo16G,
			},
			want: 16 * gib, source: "MemTotal",
		},
		{
			name: "cgroup v1 unlimited, no meminfo",
			files: map[string]string{
				"proc/self/cgroup": cgroupV1,
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n",
			},
			err: "no cgroup memory limit, and MemTotal unknown",
		},
		{
			name:  "no cgroup",
			files: map[string]string{"proc/meminfo": meminfo8G},
			want:  8 * gib, source: "MemTotal",
		},
		{
			name: "cgroup without a memory limit file",
			files: map[string]string{
				"proc/self/cgroup": cgroupV2Svc,
				"proc/meminfo":     meminfo8G,
			},
			want: 8 * gib, source: "MemTotal",
		},
		{
			name: "MemTotal smaller than the cgroup limit",
			files: map[string]string{
				"proc/self/cgroup": cgroupV2Svc,
				"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": "68719476736\n",
				"proc/meminfo": meminfo8G,
			},
			want: 8 * gib, source: "MemTotal in /proc/meminfo",
		},
		{
			name: "hybrid: the v1 memory limit counts",
			files: map[string]string{
				"proc/self/cgroup": cgroupV1,
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "1073741824\n",
				"proc/meminfo": meminfo8G,
			},
			want: gib, source: "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
		},
		{
			name: "cgroup limit, no meminfo",
			files: map[string]string{
				"proc/self/cgroup": cgroupV2Svc,
				"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": "2147483648\n",
			},
			want: 2 * gib, source: "/sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max",
		},
		{
			name:  "nothing",
			files: map[string]string{},
			err:   "/proc/meminfo",
		},
		{
			name:  "meminfo without MemTotal",
			files: map[string]string{"proc/meminfo": "MemFree: 1000 kB\n"},
			err:   "no MemTotal",
		},
		{
			name:  "meminfo garbled",
			files: map[string]string{"proc/meminfo": "MemTotal: lots\n"},
			err:   "bad line",
		},
		{
			name: "memory.max garbled",
			files: map[string]string{
				"proc/self/cgroup": cgroupV2Svc,
				"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": "two gigs\n",
				"proc/meminfo": meminfo8G,
			},
			err: "/sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, source, err := detectMemory(os.DirFS(fakeRoot(t, tc.files)))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %d (%s), error %v; want an error about %q", got, source, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || !strings.Contains(source, tc.source) {
				t.Errorf("got %d from %q, want %d from %q", got, source, tc.want, tc.source)
			}
			// The memory watch reads the cgroup whose limit binds.
			wantDir := ""
			if strings.HasPrefix(source, "/sys/fs/cgroup/") {
				wantDir = path.Dir(source)
			}
			if dir := memoryCgroup(os.DirFS(fakeRoot(t, tc.files))); dir != wantDir {
				t.Errorf("memoryCgroup %q, want %q", dir, wantDir)
			}
		})
	}
}

// TestDetectMemorySmallestCgroupLimit: when two levels of the cgroup tree
// (a service and its slice), or two hierarchies (hybrid v1 and v2), both
// set a finite limit, the smallest wins, whichever holds it: the kernel
// OOM-kills at the smallest, so --memory-limit auto must sit below it, or
// the process dies, with every flow and queued record, before the GC or
// the memory watch react.
func TestDetectMemorySmallestCgroupLimit(t *testing.T) {
	mem := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	for name, fsys := range map[string]fstest.MapFS{
		"v2 service under a larger slice": {
			"proc/meminfo":     mem(meminfo16G),
			"proc/self/cgroup": mem(cgroupV2Svc),
			"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": mem("1073741824\n"),
			"sys/fs/cgroup/system.slice/memory.max":                   mem("4294967296\n"),
		},
		"v2 slice smaller than the service": {
			"proc/meminfo":     mem(meminfo16G),
			"proc/self/cgroup": mem(cgroupV2Svc),
			"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": mem("4294967296\n"),
			"sys/fs/cgroup/system.slice/memory.max":                   mem("1073741824\n"),
		},
		"hybrid: v1 smaller than v2": {
			"proc/meminfo":                               mem(meminfo16G),
			"proc/self/cgroup":                           mem("0::/\n5:memory:/\n"),
			"sys/fs/cgroup/memory.max":                   mem("4294967296\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": mem("1073741824\n"),
		},
		"hybrid: v2 smaller than v1": {
			"proc/meminfo":                               mem(meminfo16G),
			"proc/self/cgroup":                           mem("0::/\n5:memory:/\n"),
			"sys/fs/cgroup/memory.max":                   mem("1073741824\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": mem("4294967296\n"),
		},
	} {
		got, src, err := detectMemory(fsys)
		if err != nil || got != gib {
			t.Errorf("%s: detectMemory = %d (%s), %v; want %d", name, got, src, err, gib)
		}
	}
}

func TestPlanMemoryLimit(t *testing.T) {
	cg2G := os.DirFS(fakeRoot(t, map[string]string{
		"proc/self/cgroup": cgroupV2Svc,
		"sys/fs/cgroup/system.slice/gwlbproxy.service/memory.max": "2147483648\n",
		"proc/meminfo": meminfo16G,
	}))
	none := os.DirFS(t.TempDir())
	flag := func(v string) memoryLimit {
		t.Helper()
		var m memoryLimit
		if err := m.Set(v); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, tc := range []struct {
		name       string
		m          memoryLimit
		gomemlimit string
		root       string // "none": nothing to detect
		keep       bool
		limit      int64
		source     []string
		warning    string
		err        string
	}{
		{name: "default auto", m: defaultMemoryLimit(),
			limit: 1932735283, source: []string{"auto (the default)", "90% of 2GiB", "memory.max"}},
		{name: "auto given", m: flag("auto"),
			limit: 1932735283, source: []string{"--memory-limit auto:", "90% of 2GiB"}},
		{name: "percentage", m: flag("50%"),
			limit: gib, source: []string{"--memory-limit 50%", "50% of 2GiB"}},
		{name: "size", m: flag("1536MiB"),
			limit: 1536 << 20, source: []string{"--memory-limit 1536MiB"}},
		{name: "size above the memory available", m: flag("3GiB"),
			limit: 3 * gib, source: []string{"--memory-limit 3GiB"}, warning: "more than the memory available, 2GiB"},
		{name: "off", m: flag("off"),
			limit: math.MaxInt64, source: []string{"--memory-limit off"}},
		{name: "GOMEMLIMIT, no flag", m: defaultMemoryLimit(), gomemlimit: "1GiB",
			keep: true, source: []string{"GOMEMLIMIT=1GiB"}},
		{name: "GOMEMLIMIT and the flag", m: flag("1536MiB"), gomemlimit: "1GiB",
			limit: 1536 << 20, source: []string{"--memory-limit 1536MiB", "instead of GOMEMLIMIT=1GiB"}},
		{name: "GOMEMLIMIT and auto given", m: flag("auto"), gomemlimit: "1GiB",
			limit: 1932735283, source: []string{"90% of 2GiB", "instead of GOMEMLIMIT=1GiB"}},
		{name: "GOMEMLIMIT and off given", m: flag("off"), gomemlimit: "1GiB",
			limit: math.MaxInt64, source: []string{"--memory-limit off"}},
		{name: "auto, nothing detected", m: defaultMemoryLimit(), root: "none",
			keep: true, warning: "no memory limit is set"},
		{name: "percentage, nothing detected", m: flag("90%"), root: "none",
			err: "--memory-limit 90%: finding the memory available"},
		{name: "size, nothing detected", m: flag("1GiB"), root: "none",
			limit: gib, source: []string{"--memory-limit 1GiB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := cg2G
			if tc.root == "none" {
				fsys = none
			}
			p, err := planMemoryLimit(tc.m, tc.gomemlimit, fsys)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("plan %+v, error %v; want an error about %q", p, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.keep != tc.keep || (!tc.keep && p.limit != tc.limit) {
				t.Errorf("keep %v, limit %d; want keep %v, limit %d", p.keep, p.limit, tc.keep, tc.limit)
			}
			for _, s := range tc.source {
				if !strings.Contains(p.source, s) {
					t.Errorf("source %q lacks %q", p.source, s)
				}
			}
			if (tc.warning == "") != (p.warning == "") || !strings.Contains(p.warning, tc.warning) {
				t.Errorf("warning %q, want one with %q", p.warning, tc.warning)
			}
		})
	}
}

// TestApplyMemoryLimit: the runtime's limit is set, or left, and the log
// says which and why.
func TestApplyMemoryLimit(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	root := os.DirFS(fakeRoot(t, map[string]string{
		"proc/self/cgroup":         "0::/\n",
		"sys/fs/cgroup/memory.max": "2147483648\n",
		"proc/meminfo":             meminfo16G,
	}))
	apply := func(m memoryLimit, gomemlimit string) string {
		t.Helper()
		var logs bytes.Buffer
		if err := applyMemoryLimit(slog.New(slog.NewTextHandler(&logs, nil)), m, gomemlimit, root); err != nil {
			t.Fatal(err)
		}
		return logs.String()
	}

	logs := apply(defaultMemoryLimit(), "")
	if got := debug.SetMemoryLimit(-1); got != 1932735283 {
		t.Errorf("auto: limit %d, want 90%% of 2GiB", got)
	}
	for _, want := range []string{`msg="memory limit"`, "limit=1.8GiB", "bytes=1932735283", "90% of 2GiB (/sys/fs/cgroup/memory.max)"} {
		if !strings.Contains(logs, want) {
			t.Errorf("auto: log %q lacks %q", logs, want)
		}
	}

	// GOMEMLIMIT in the environment, no flag: what the runtime has stays.
	debug.SetMemoryLimit(3 << 30)
	logs = apply(defaultMemoryLimit(), "3GiB")
	if got := debug.SetMemoryLimit(-1); got != 3<<30 {
		t.Errorf("GOMEMLIMIT=3GiB: limit %d, want it left at 3GiB", got)
	}
	if !strings.Contains(logs, "limit=3GiB") || !strings.Contains(logs, "GOMEMLIMIT=3GiB") {
		t.Errorf("GOMEMLIMIT=3GiB: log %q", logs)
	}

	var m memoryLimit
	m.Set("off")
	logs = apply(m, "3GiB")
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("off: limit %d, want none", got)
	}
	if !strings.Contains(logs, `msg="no memory limit"`) {
		t.Errorf("off: log %q", logs)
	}

	m.Set("5%")
	if err := applyMemoryLimit(slog.New(slog.DiscardHandler), m, "", os.DirFS(t.TempDir())); err == nil {
		t.Error("5% with the memory available unknown: no error")
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		512:        "512B",
		1024:       "1KiB",
		1536 << 20: "1.5GiB",
		2 << 30:    "2GiB",
		1932735283: "1.8GiB",
		3 << 40:    "3TiB",
	} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}
