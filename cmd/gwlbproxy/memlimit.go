package main

// --memory-limit: the Go runtime's soft memory limit (GOMEMLIMIT).
//
// With the default GOGC=100 the heap may grow to twice the live heap before
// a collection, and freed pages stay resident until the scavenger returns
// them; an appliance that owns its instance's memory must not be OOM-killed
// for that. A soft limit makes the GC collect harder, and return memory to
// the OS sooner, as the process nears it. GOGC is left alone: it governs
// while memory is well under the limit, so an idle appliance stays small
// (with GOGC=off the heap would sit at the limit).

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryLimitUsage is the help text of --memory-limit.
const memoryLimitUsage = "soft limit on the Go runtime's memory (as GOMEMLIMIT): auto, off (no limit), " +
	"a size (bytes, or with a unit: KiB, MiB, GiB, TiB are powers of 1024, K, M, G, T powers of 1000: 1536MiB, 2GiB, 2G), " +
	"or a percentage (90%) of the memory available: the smaller of the cgroup's memory limit " +
	"(cgroup v2 memory.max, v1 memory.limit_in_bytes) and MemTotal in /proc/meminfo. " +
	"auto is 90% of the memory available; without the flag a GOMEMLIMIT set in the environment is left in force"

// autoMemoryPercent is the share of the available memory --memory-limit
// auto takes; the rest is headroom for what the limit does not cover
// (memory outside the Go runtime, the kernel's socket buffers and page cache
// charged to the cgroup).
const autoMemoryPercent = 90

type memoryLimitKind int

const (
	memoryLimitAuto memoryLimitKind = iota + 1 // the zero value is "unset", so that --help shows the default
	memoryLimitOff
	memoryLimitBytes
	memoryLimitPercent
)

// memoryLimit is the value of --memory-limit. It implements flag.Value.
type memoryLimit struct {
	kind    memoryLimitKind
	bytes   int64   // memoryLimitBytes
	percent float64 // memoryLimitPercent: in (0, 100]
	text    string  // as given
	set     bool    // given on the command line
}

func (m *memoryLimit) String() string {
	if m == nil {
		return ""
	}
	return m.text
}

// minMemoryLimit is the least size --memory-limit takes. The appliance
// at rest (the runtime, its GENEVE readers and buffers, the policy, the
// CA, the record queues) holds a live heap of some tens of MiB, and the
// memory watch calls memory critical at 80% of the limit: below this floor
// it would start critical, refusing new flows and failing the health check
// for good. A size meant in MiB but written without the unit (2048) lands
// here too.
const minMemoryLimit = 64 << 20

// Set parses v (see parseMemoryLimit) and records that the flag was given.
// A size below minMemoryLimit is refused.
func (m *memoryLimit) Set(v string) error {
	p, err := parseMemoryLimit(v)
	if err != nil {
		return err
	}
	if p.kind == memoryLimitBytes && p.bytes < minMemoryLimit {
		return fmt.Errorf("size %q (%s): must be at least %s, or the appliance would start with memory critical (a size without a unit is bytes)",
			v, formatSize(p.bytes), formatSize(minMemoryLimit))
	}
	p.set = true
	*m = p
	return nil
}

// defaultMemoryLimit is --memory-limit's default: auto, not given.
func defaultMemoryLimit() memoryLimit {
	return memoryLimit{kind: memoryLimitAuto, text: "auto"}
}

// parseMemoryLimit parses a --memory-limit value: "auto", "off", a
// percentage ("90%": more than 0, at most 100) or a size (parseSize).
func parseMemoryLimit(s string) (memoryLimit, error) {
	v := strings.TrimSpace(s)
	switch {
	case strings.EqualFold(v, "auto"):
		return memoryLimit{kind: memoryLimitAuto, text: v}, nil
	case strings.EqualFold(v, "off"):
		return memoryLimit{kind: memoryLimitOff, text: v}, nil
	case strings.HasSuffix(v, "%"):
		p, err := parsePercent(strings.TrimSpace(strings.TrimSuffix(v, "%")))
		if err != nil {
			return memoryLimit{}, err
		}
		return memoryLimit{kind: memoryLimitPercent, percent: p, text: v}, nil
	}
	n, err := parseSize(v)
	if errors.Is(err, errSizeSyntax) {
		return memoryLimit{}, fmt.Errorf("%w; or auto, off, or a percentage such as 90%%", err)
	}
	if err != nil {
		return memoryLimit{}, err
	}
	return memoryLimit{kind: memoryLimitBytes, bytes: n, text: v}, nil
}

// parsePercent parses the number of a percentage: a decimal more than 0 and
// at most 100.
func parsePercent(s string) (float64, error) {
	if s == "" || strings.Trim(s, "0123456789.") != "" {
		return 0, fmt.Errorf("percentage %q: want a number more than 0 and at most 100, such as 90%%", s+"%")
	}
	p, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("percentage %q: %w", s+"%", err)
	}
	if !(p > 0 && p <= 100) {
		return 0, fmt.Errorf("percentage %q: must be more than 0 and at most 100", s+"%")
	}
	return p, nil
}

// sizeUnits are the units a size may end in: binary (KiB...) as GOMEMLIMIT
// has them, and decimal (K, M, G, T) as disks and EC2's instance sizes are
// counted. Matched exactly, case included.
var sizeUnits = map[string]int64{
	"":    1,
	"B":   1,
	"KiB": 1 << 10,
	"MiB": 1 << 20,
	"GiB": 1 << 30,
	"TiB": 1 << 40,
	"K":   1e3,
	"M":   1e6,
	"G":   1e9,
	"T":   1e12,
}

// errSizeSyntax: a size is not a number with a unit.
var errSizeSyntax = errors.New("want a whole number with an optional unit (B, KiB, MiB, GiB, TiB; K, M, G, T), such as 1536MiB or 2G")

// parseSize parses a whole number of bytes with an optional unit
// (sizeUnits), the unit optionally after a space: "1536MiB", "2G", "4096".
// It must be more than 0 and fit in an int64.
func parseSize(s string) (int64, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return !strings.ContainsRune("+-0123456789.", r) })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q: %w", s, unit, errSizeSyntax)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("size %q: too large", s)
		}
		return 0, fmt.Errorf("size %q: %w", s, errSizeSyntax)
	}
	if n <= 0 {
		return 0, fmt.Errorf("size %q: must be more than 0", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mult, nil
}

// formatSize writes n bytes for people: "2GiB", "1.8GiB", "512B".
func formatSize(n int64) string {
	units := []string{"TiB", "GiB", "MiB", "KiB"}
	for i, u := range units {
		scale := int64(1) << (10 * (len(units) - i))
		if n >= scale {
			s := strconv.FormatFloat(float64(n)/float64(scale), 'f', 1, 64)
			return strings.TrimSuffix(s, ".0") + u
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// cgroupV1Unlimited: cgroup v1 writes "no limit" as a huge number (the page
// counter's maximum in bytes, 9223372036854771712 with 4 KiB pages); any
// limit from here up is none.
const cgroupV1Unlimited = 1 << 62

// detectMemory finds the memory available to the process: the smaller of its
// cgroup's memory limit and the machine's MemTotal. fsys is the filesystem
// from its root (os.DirFS("/")), so that tests can give fake proc and sys
// files. source names where the figure came from. An error means nothing
// could be found, or a file that is there could not be read or understood.
func detectMemory(fsys fs.FS) (avail int64, source string, err error) {
	limit, source, err := cgroupMemoryLimit(fsys)
	if err != nil {
		return 0, "", err
	}
	total, terr := memTotal(fsys)
	switch {
	case terr != nil && limit == 0:
		return 0, "", fmt.Errorf("no cgroup memory limit, and MemTotal unknown: %w", terr)
	case terr == nil && (limit == 0 || total < limit):
		return total, "MemTotal in /proc/meminfo", nil
	}
	return limit, source, nil
}

// cgroupMemoryLimit reads the memory limit of the process's cgroup, v2 or
// v1 (cgroupLimits), from /proc/self/cgroup and the files under
// /sys/fs/cgroup; 0 is no limit. With both hierarchies (hybrid mode) the
// smaller limit counts.
func cgroupMemoryLimit(fsys fs.FS) (limit int64, source string, err error) {
	b, err := fs.ReadFile(fsys, "proc/self/cgroup")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, "", nil // not Linux, or no cgroups
	}
	if err != nil {
		return 0, "", fmt.Errorf("reading /proc/self/cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var dir, file string
		switch {
		case f[0] == "0" && f[1] == "": // v2, the unified hierarchy
			dir, file = "sys/fs/cgroup", "memory.max"
		case hasController(f[1], "memory"): // v1
			dir, file = "sys/fs/cgroup/memory", "memory.limit_in_bytes"
		default:
			continue
		}
		l, src, err := cgroupLimits(fsys, dir, f[2], file)
		if err != nil {
			return 0, "", err
		}
		if l > 0 && (limit == 0 || l < limit) {
			limit, source = l, src
		}
	}
	return limit, source, nil
}

func hasController(list, name string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// cgroupLimits reads file (memory.max or memory.limit_in_bytes) in the
// cgroup at cgroupPath under the hierarchy mounted at dir, and in each of its
// ancestors, since a parent's limit (a systemd slice's) binds its children
// too; it returns the smallest, 0 if none. Walking up also finds the limit
// when the cgroup's path is the host's but the container sees only its own
// cgroup, mounted at dir (Docker without a cgroup namespace): there the
// cgroup's own directory does not exist and its limit is in dir.
func cgroupLimits(fsys fs.FS, dir, cgroupPath, file string) (limit int64, source string, err error) {
	p := strings.Trim(path.Clean("/"+strings.TrimSpace(cgroupPath)), "/")
	if p == "" || !fs.ValidPath(p) {
		p = "."
	}
	for {
		name := path.Join(dir, p, file)
		l, err := readCgroupLimit(fsys, name)
		if err != nil {
			return 0, "", err
		}
		if l > 0 && (limit == 0 || l < limit) {
			limit, source = l, "/"+name
		}
		if p == "." {
			return limit, source, nil
		}
		p = path.Dir(p)
	}
}

// readCgroupLimit reads a cgroup memory limit file: a number of bytes, or
// "max" (v2) or a huge number (v1) for none, read as 0; so is a missing file.
func readCgroupLimit(fsys fs.FS, name string) (int64, error) {
	b, err := fs.ReadFile(fsys, name)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading /%s: %w", name, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading /%s: %w", name, err)
	}
	if n == 0 || n >= cgroupV1Unlimited {
		return 0, nil
	}
	return int64(n), nil
}

// memTotal reads MemTotal from /proc/meminfo, in bytes.
func memTotal(fsys fs.FS) (int64, error) {
	f, err := fsys.Open("proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("reading /proc/meminfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// MemTotal:       16318888 kB
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		num, ok := strings.CutSuffix(strings.TrimSpace(rest), " kB")
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if !ok || err != nil || n <= 0 || n > math.MaxInt64/1024 {
			return 0, fmt.Errorf("reading /proc/meminfo: bad line %q", sc.Text())
		}
		return n * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading /proc/meminfo: %w", err)
	}
	return 0, errors.New("reading /proc/meminfo: no MemTotal")
}

// memoryLimitPlan is what to do with the runtime's memory limit.
type memoryLimitPlan struct {
	keep    bool   // leave the runtime's limit as it is
	limit   int64  // else set this; math.MaxInt64 is no limit
	source  string // where the limit, or the decision, came from
	warning string // something the operator should know, logged as a warning
}

// planMemoryLimit decides the limit for m. gomemlimit is the GOMEMLIMIT
// environment variable: when it is set and the flag was not given, the
// runtime has applied it already and it stays. Sizes of memory (auto,
// percentages) are detected in fsys (detectMemory); when auto cannot find
// them the runtime's limit stays, with a warning, while a percentage given
// is an error.
func planMemoryLimit(m memoryLimit, gomemlimit string, fsys fs.FS) (memoryLimitPlan, error) {
	if gomemlimit != "" && !m.set {
		return memoryLimitPlan{keep: true, source: "GOMEMLIMIT=" + gomemlimit + " in the environment"}, nil
	}
	var p memoryLimitPlan
	switch m.kind {
	case memoryLimitOff:
		p = memoryLimitPlan{limit: math.MaxInt64, source: "--memory-limit off"}
	case memoryLimitBytes:
		p = memoryLimitPlan{limit: m.bytes, source: "--memory-limit " + m.text}
		if avail, src, err := detectMemory(fsys); err == nil && m.bytes > avail {
			p.warning = fmt.Sprintf("--memory-limit %s is more than the memory available, %s (%s): the process may be killed before the limit makes the GC work harder",
				m.text, formatSize(avail), src)
		}
	case memoryLimitPercent, memoryLimitAuto:
		pct, name := m.percent, "--memory-limit "+m.text
		if m.kind == memoryLimitAuto {
			pct = autoMemoryPercent
			if !m.set {
				name = "--memory-limit auto (the default)"
			}
		}
		avail, src, err := detectMemory(fsys)
		if err != nil {
			if m.kind == memoryLimitAuto {
				return memoryLimitPlan{keep: true, source: name,
					warning: fmt.Sprintf("%s: memory available not found, so no memory limit is set: %v", name, err)}, nil
			}
			return memoryLimitPlan{}, fmt.Errorf("--memory-limit %s: finding the memory available: %w", m.text, err)
		}
		limit := max(int64(float64(avail)*pct/100), 1)
		p = memoryLimitPlan{limit: limit, source: fmt.Sprintf("%s: %s%% of %s (%s)",
			name, strconv.FormatFloat(pct, 'f', -1, 64), formatSize(avail), src)}
		if limit < minMemoryLimit {
			p.warning = fmt.Sprintf("%s is %s, below the %s the appliance needs at rest: memory may be critical from the start",
				name, formatSize(limit), formatSize(minMemoryLimit))
		}
	default:
		return memoryLimitPlan{}, fmt.Errorf("--memory-limit: no value")
	}
	if gomemlimit != "" {
		p.source += ", instead of GOMEMLIMIT=" + gomemlimit
	}
	return p, nil
}

// applyMemoryLimit sets the runtime's soft memory limit as --memory-limit
// says (planMemoryLimit) and logs the limit and where it came from.
func applyMemoryLimit(log *slog.Logger, m memoryLimit, gomemlimit string, fsys fs.FS) error {
	p, err := planMemoryLimit(m, gomemlimit, fsys)
	if err != nil {
		return err
	}
	if p.warning != "" {
		log.Warn(p.warning)
	}
	if !p.keep {
		debug.SetMemoryLimit(p.limit)
	}
	if cur := debug.SetMemoryLimit(-1); cur == math.MaxInt64 {
		log.Info("no memory limit", "source", p.source)
	} else {
		log.Info("memory limit", "limit", formatSize(cur), "bytes", cur, "source", p.source)
	}
	return nil
}

// memoryCgroup returns the directory of the cgroup whose memory limit
// binds the process, when one does (below MemTotal), for the memory watch
// to read what is charged to it; "" otherwise.
func memoryCgroup(fsys fs.FS) string {
	_, src, err := detectMemory(fsys)
	if err != nil || !strings.HasPrefix(src, "/sys/fs/cgroup/") {
		return ""
	}
	return path.Dir(src)
}
