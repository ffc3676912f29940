package records

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// openLogWriter opens the LogFile at path and a Writer to it, both closed
// when the test ends, the Writer first.
func openLogWriter(t *testing.T, path string) (*LogFile, *Writer) {
	t.Helper()
	lf, err := OpenLogFile(path, Rotation{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lf.Close() })
	w := NewWriter(nil, lf)
	t.Cleanup(func() { w.Close(context.Background()) })
	return lf, w
}

// TestLogFileFollowsRename: records stream into a real access log; midway
// the file is renamed away, as logrotate rotates it. Within reopenCheck the
// records go to a new file at the path, created with the same mode, and
// none is lost: every record counted written is in the two files together,
// once, in order.
func TestLogFileFollowsRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	_, w := openLogWriter(t, path)
	start := time.Now()
	renamed := false
	n := 0
	for time.Since(start) < 2*reopenCheck {
		if !renamed && time.Since(start) > reopenCheck/2 {
			if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(path, path+".1"); err != nil {
				t.Fatal(err)
			}
			renamed = true
		}
		w.Write(&Record{Kind: "tcp", Packets: int64(n)})
		n++
		time.Sleep(2 * time.Millisecond)
	}
	if err := w.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Written != uint64(n) {
		t.Fatalf("stats %+v, want all %d written", st, n)
	}
	old, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no new access log at the path after the rename: %v", err)
	}
	a, b := seqs(t, old), seqs(t, cur)
	t.Logf("%d records: %d in the rotated file, %d in the new one", n, len(a), len(b))
	if len(b) == 0 {
		t.Fatalf("nothing written to the new file at the path in the %v after the rename", 3*reopenCheck/2)
	}
	inOrder(t, slices.Concat(a, b), n)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != logFileMode {
		t.Errorf("the new access log: %v, mode %v; want %v", err, fi.Mode().Perm(), os.FileMode(logFileMode))
	}
}

// TestLogFileFollowsRemoval: a removed access log (an operator's rm) is
// created anew at the path, and records go on there.
func TestLogFileFollowsRemoval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	lf, err := OpenLogFile(path, Rotation{})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if _, err := lf.Write([]byte("{\"a\":1}\n")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reopenCheck + 10*time.Millisecond)
	if _, err := lf.Write([]byte("{\"b\":2}\n")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "{\"b\":2}\n" {
		t.Fatalf("the access log after its removal holds %q (%v)", b, err)
	}
	if st := lf.Stats(); st.Reopens != 1 || st.ReopenFailures != 0 {
		t.Errorf("stats %+v, want 1 reopen", st)
	}
	// The path now names something that cannot be opened for appending
	// (a directory): the reopen fails, counted, and records go on to the
	// file open.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reopenCheck + 10*time.Millisecond)
	if _, err := lf.Write([]byte("{\"c\":3}\n")); err != nil {
		t.Fatal(err)
	}
	if st := lf.Stats(); st.Reopens != 1 || st.ReopenFailures != 1 {
		t.Errorf("stats %+v, want 1 reopen, 1 failure", st)
	}
	if b, _ := os.ReadFile(path + ".1"); string(b) != "{\"b\":2}\n{\"c\":3}\n" {
		t.Errorf("the file open holds %q", b)
	}
}

// TestLogFileCutLineStaysBehind: the newline a Writer writes to end a line
// cut short goes to the file the cut line is in; once the path names a new
// file, that has no line to end and gets no blank line.
func TestLogFileCutLineStaysBehind(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	lf, err := OpenLogFile(path, Rotation{})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	lf.Write([]byte("{\"a\":1}\n{\"cut"))
	if _, err := lf.Write(newline); err != nil { // still the same file
		t.Fatal(err)
	}
	lf.Write([]byte("{\"b\":2}\n{\"cut"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reopenCheck + 10*time.Millisecond)
	for _, p := range [][]byte{newline, []byte("{\"c\":3}\n")} {
		if n, err := lf.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if b, _ := os.ReadFile(path + ".1"); string(b) != "{\"a\":1}\n{\"cut\n{\"b\":2}\n{\"cut" {
		t.Errorf("the rotated file holds %q", b)
	}
	if b, _ := os.ReadFile(path); string(b) != "{\"c\":3}\n" {
		t.Errorf("the new file holds %q", b)
	}
}

// fifoLogFile makes a FIFO at path, opens it for reading (so that opening
// it for writing succeeds; rd never reads unless the test reads it) and
// opens the LogFile on it.
func fifoLogFile(t *testing.T, path string) (rd *os.File, lf *LogFile) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	rd, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	if lf, err = OpenLogFile(path, Rotation{}); err != nil {
		t.Fatal(err)
	}
	return rd, lf
}

// closeOrBlocked closes lf and waits up to 2 s for Close to return. If it
// has not, it fails the test (Close blocked behind behind) and returns the
// channel Close's result is to come on; otherwise nil.
func closeOrBlocked(t *testing.T, lf *LogFile, behind string) <-chan error {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- lf.Close() }()
	select {
	case err := <-closed:
		t.Logf("LogFile.Close: %v", err)
		return nil
	case <-time.After(2 * time.Second):
		t.Errorf("LogFile.Close still blocked after 2 s behind %s", behind)
		return closed
	}
}

// TestLogFileCloseDoesNotWaitForAStuckWrite: the access log's write hangs
// (a FIFO whose reader never reads, standing for a hung disk). The Writer's
// Close gives up at its deadline and counts the rest dropped; the
// appliance's closeSinks then closes the LogFile, which must return at once.
// It used to wait for the mutex the stuck Write held, so shutdown hung
// until systemd killed the process.
func TestLogFileCloseDoesNotWaitForAStuckWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	rd, lf := fifoLogFile(t, path)
	w := NewWriter(nil, lf)
	for i := range 2000 {
		w.Write(&Record{Kind: "tcp", Path: string(make([]byte, 200)), Packets: int64(i)})
	}
	time.Sleep(200 * time.Millisecond) // the pipe is full: the write blocks
	if err := w.Close(ctxFor(t, 100*time.Millisecond)); err == nil {
		t.Fatal("Writer.Close wrote everything into a pipe nobody reads")
	}
	if blocked := closeOrBlocked(t, lf, "the stuck write"); blocked != nil {
		rd.Close() // the write fails with EPIPE; Close can go on
		<-blocked
	}
	rd.Close()
}

// TestLogFileRemovedWithItsDirectoryFails: the access log is removed with
// its directory (rm -rf to free space; the same holds for a directory
// remounted read-only or no longer writable), so the path cannot be
// opened anew. Records written on into the unlinked file would be lost for
// good while counted written, with the health check passing: they must
// fail instead, so that FailingSeconds runs (the health check fails after
// --record-stall) and, once the directory is back, a records_lost line at
// the path tells how many were lost.
func TestLogFileRemovedWithItsDirectoryFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "access.log")
	lf, w := openLogWriter(t, path)
	w.Write(&Record{Kind: "tcp", Packets: 0})
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reopenCheck + 10*time.Millisecond)
	const lost = 20
	for i := range lost {
		w.Write(&Record{Kind: "tcp", Packets: int64(1 + i)})
		w.Flush(ctxFor(t, 5*time.Second))
		time.Sleep(60 * time.Millisecond) // spread over more than failureRecovery
	}
	st := w.Stats()
	t.Logf("with the directory gone: writer %+v, log file %+v", st, lf.Stats())
	if st.Written != 1 || st.Failed != lost {
		t.Errorf("writer stats %+v: want 1 written, %d failed (the unlinked file would lose them)", st, lost)
	}
	if st.FailingSeconds <= 0 {
		t.Errorf("FailingSeconds %v: the health check would never fail", st.FailingSeconds)
	}
	if lf.Stats().ReopenFailures == 0 {
		t.Errorf("log file stats %+v: no reopen failure counted", lf.Stats())
	}
	// The directory is back: the path is opened anew, and the first line
	// there tells of the lost records.
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w.Write(&Record{Kind: "tcp", Packets: 1 + lost})
	if err := w.Flush(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no access log at the path once its directory is back: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	t.Logf("the new access log: %q", lines)
	if len(lines) != 2 || !strings.Contains(lines[0], `"kind":"records_lost"`) ||
		!strings.Contains(lines[0], `"lost":`+strconv.Itoa(lost)+",") {
		t.Fatalf("the new access log holds %q: want a records_lost line for %d records, then the record", lines, lost)
	}
	if seqs(t, []byte(lines[1]+"\n"))[0] != 1+lost {
		t.Errorf("the record after the marker: %q", lines[1])
	}
}

// TestLogFileCloseDoesNotWaitForAReopen: --access-log names a FIFO a
// collector reads. The collector restarts and makes its FIFO anew (rm,
// mkfifo) but has not opened it yet; the next write looks at the path and
// reopens it, and open(2) for writing blocks until a reader comes (as a
// stat or open on a hung NFS mount blocks). The drain's end closes the
// LogFile meanwhile: Close must return at once, and the reopened file,
// once the open returns, is closed rather than written to. Close used to
// wait for the mutex the blocked reopen held.
func TestLogFileCloseDoesNotWaitForAReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.fifo")
	r, lf := fifoLogFile(t, path)
	if _, err := lf.Write([]byte("{\"a\":1}\n")); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil { // the collector's new FIFO
		t.Fatal(err)
	}
	time.Sleep(reopenCheck + 10*time.Millisecond)
	wrote := make(chan error, 1)
	go func() { _, err := lf.Write([]byte("{\"a\":2}\n")); wrote <- err }()
	time.Sleep(200 * time.Millisecond) // the reopen blocks in open(2)
	select {
	case err := <-wrote:
		t.Fatalf("the write did not wait for the FIFO's reader: %v", err)
	default:
	}
	blocked := closeOrBlocked(t, lf, "the reopen")
	// The collector opens its FIFO: the reopen returns, to a closed LogFile.
	r2, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	select {
	case err := <-wrote:
		if !errors.Is(err, fs.ErrClosed) {
			t.Errorf("the write after Close: %v, want fs.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the write still blocked once the FIFO had a reader")
	}
	if blocked != nil {
		<-blocked
	}
	buf := make([]byte, 64)
	if n, _ := r2.Read(buf); n > 0 {
		t.Errorf("written to the FIFO after Close: %q", buf[:n])
	}
}
