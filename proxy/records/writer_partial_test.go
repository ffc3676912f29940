package records

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// cutFile is a real file on a disk with room bytes left: a write takes what
// fits and fails with ENOSPC, as os.File.Write does when a disk fills.
type cutFile struct {
	f    *os.File
	room int
}

func (c *cutFile) Write(p []byte) (int, error) {
	n := min(len(p), c.room)
	n, err := c.f.Write(p[:n])
	c.room -= n
	if err == nil && n < len(p) {
		err = &os.PathError{Op: "write", Path: c.f.Name(), Err: syscall.ENOSPC}
	}
	return n, err
}

// lineCounts reads the JSON lines of b: how many parse, and the lines that
// do not.
func lineCounts(t *testing.T, b []byte) (good int, bad []string) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r Record
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			bad = append(bad, sc.Text())
			continue
		}
		if r.Kind != "records_lost" {
			good++
		}
	}
	return good, bad
}

// TestWriterDiskFillsMidLine: a disk that fills in the middle of a record
// (a write that takes part of a batch and fails) loses that record and the
// ones after it: they are counted as failed, not written. Once space comes
// back, the cut line is ended before the next write, so that the next
// record is a line of its own that parses, not the cut one's tail.
func TestWriterDiskFillsMidLine(t *testing.T) {
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "access.log"), os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec := func(i int) *Record {
		return &Record{Kind: "http", Packets: int64(i), Path: "/" + strings.Repeat("a", 200)}
	}
	var line bytes.Buffer
	w0 := NewWriter(nil, &line)
	w0.Write(rec(0))
	w0.Close(context.Background())
	size := line.Len()

	// Room for two records and half of a third; five are written, at once,
	// so that the batching does not matter.
	sink := &cutFile{f: f, room: 2*size + size/2}
	w := NewWriter(nil, sink)
	defer w.Close(context.Background())
	for i := range 5 {
		w.Write(rec(i))
	}
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if st.Written != 2 || st.Failed != 3 || st.Dropped != 0 || st.SinkErrors == 0 || st.FailingSeconds <= 0 || !strings.Contains(st.LastError, "no space left") {
		t.Fatalf("disk full: %+v, want 2 written and 3 failed", st)
	}
	sink.room = 1 << 20 // space comes back (logrotate, an operator)
	for i := 5; i < 8; i++ {
		w.Write(rec(i))
	}
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	st = w.Stats()
	if st.Written != 5 || st.Failed != 3 {
		t.Fatalf("after space came back: %+v, want 5 written and 3 failed", st)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	good, bad := lineCounts(t, b)
	if good != 5 || len(bad) != 1 || !strings.HasPrefix(bad[0], `{"time":`) {
		t.Fatalf("file has %d lines that parse and %d that do not (%q), want 5 and the cut one", good, len(bad), bad)
	}
	var seq []int64
	for l := range strings.Lines(string(b)) {
		var r Record
		if json.Unmarshal([]byte(l), &r) == nil && r.Kind != "records_lost" {
			seq = append(seq, r.Packets)
		}
	}
	if fmt.Sprint(seq) != "[0 1 5 6 7]" {
		t.Fatalf("records in the file: %v, want 0 1 5 6 7", seq)
	}
	// Before the records written once space came back: a marker of the
	// three the full disk lost.
	if m := lostMarkers(t, b); len(m) != 1 || m[0].Lost != 3 || !strings.Contains(m[0].Error, "no space left") {
		t.Fatalf("records_lost markers %+v, want one of the 3 records the full disk lost", m)
	}
}

// TestWriterTmpfsFills runs the writer on a real disk that fills: a 64 KiB
// tmpfs, mounted in a mount namespace of the test's own. Every record is
// counted as written or failed, the file holds exactly the written ones
// (and at most one cut line), and the records written after space comes
// back parse.
func TestWriterTmpfsFills(t *testing.T) {
	testenv.RequireRoot(t, "mounting a tmpfs needs root")
	if !testenv.Privileged() {
		t.Skipf("mounts a tmpfs: runs with %s=1", testenv.PrivilegedEnv)
	}
	logf, filler := fullTmpfs(t)
	w := NewWriter(nil, logf)
	defer w.Close(context.Background())
	const n = 200
	for i := range n {
		w.Write(&Record{Kind: "http", Packets: int64(i), Path: "/" + strings.Repeat("a", 700)})
		if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil { // a write a record, as at low load
			t.Fatal(err)
		}
	}
	st := w.Stats()
	if st.Failed == 0 || st.SinkErrors == 0 || st.Written+st.Failed != n || !strings.Contains(st.LastError, "no space left") {
		t.Fatalf("filling the disk: %+v, want records failed, every one counted", st)
	}
	if err := filler.Truncate(0); err != nil { // space comes back
		t.Fatal(err)
	}
	for i := range 3 {
		w.Write(&Record{Kind: "tcp", Packets: int64(n + i), Rule: "after-recovery"})
		if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	st = w.Stats()
	b, err := io.ReadAll(io.NewSectionReader(logf, 0, 1<<30))
	if err != nil {
		t.Fatal(err)
	}
	good, bad := lineCounts(t, b)
	t.Logf("%+v; %d lines parse, %d do not", st, good, len(bad))
	if uint64(good) != st.Written || st.Written+st.Failed != n+3 || len(bad) > 1 {
		t.Fatalf("file has %d lines that parse and %d that do not; stats %+v", good, len(bad), st)
	}
	if !bytes.HasSuffix(b, []byte(fmt.Sprintf("\"packets\":%d}\n", n+2))) || bytes.Count(b, []byte("after-recovery")) != 3 {
		t.Fatalf("the records after space came back are not all whole: file ends %q", b[max(0, len(b)-300):])
	}
}

// fullTmpfs mounts a 64 KiB tmpfs on a directory and returns an access log
// opened on it and a 16 KiB filler file to free space with. The mount is in a
// private mount namespace of a thread of its own, which ends with the
// goroutine that made it: nothing of it shows outside, nor outlives the
// files. Both files are used through their descriptors only.
func fullTmpfs(t *testing.T) (logf, filler *os.File) {
	dir := t.TempDir()
	err := testenv.InPrivateTmpfs(dir, "size=64k", func() error {
		var err error
		if filler, err = os.OpenFile(filepath.Join(dir, "filler"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
			return err
		}
		if _, err = filler.Write(make([]byte, 16<<10)); err != nil {
			return err
		}
		logf, err = os.OpenFile(filepath.Join(dir, "access.log"), os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
		return err
	})
	for _, f := range []*os.File{logf, filler} {
		if f != nil {
			t.Cleanup(func() { f.Close() })
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return logf, filler
}
