package capture

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/internal/testenv"
)

// What the pcap writer counts when the file system fails it: a packet is
// counted written (packets, bytes) once its bytes reached the file, and
// lost (errors) when they never will. /stats and /metrics show both.

// newTestPcapWriter is a writer on a fresh directory, with the defaults.
func newTestPcapWriter(t *testing.T) *pcapWriter {
	t.Helper()
	cfg := Config{PcapDir: t.TempDir()}
	cfg.setDefaults()
	w, err := newPcapWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// writeN hands n copies of pkt to w, with a flush after each if flush.
func writeN(w *pcapWriter, pkt []byte, n int, flush bool) {
	for i := range n {
		w.write(&slot{endpoint: epA, cookie: uint32(i), ts: int64(i), buf: pkt, n: len(pkt)})
		if flush {
			w.flush() // as run does when its queue runs empty
		}
	}
}

// TestPcapWriteFailureCountsLostPackets: the writer buffers up to 256 KiB
// before the file sees a byte. When the file system refuses the write
// (/dev/full: ENOSPC), every buffered packet is lost: none may stay
// counted as written, and errors counts each of them, whether the write
// fails when the queue runs empty (flush) or at a rotation or Close
// (finish).
func TestPcapWriteFailureCountsLostPackets(t *testing.T) {
	for _, how := range []string{"flush", "finish"} {
		t.Run(how, func(t *testing.T) {
			w := newTestPcapWriter(t)
			// Through a link of the test's: whatever the writer does with
			// the name, /dev/full stays.
			full := filepath.Join(t.TempDir(), "full")
			if err := os.Symlink("/dev/full", full); err != nil {
				t.Fatal(err)
			}
			w.create = func(string) (*os.File, error) { return os.OpenFile(full, os.O_WRONLY, 0) }
			pkt := tcpPacket(t, client, dest, []byte("GET /secret-exfil HTTP/1.1\r\n\r\n"))
			const n = 500
			writeN(w, pkt, n, false)
			if how == "flush" {
				w.flush()
			} else {
				w.finish()
			}
			st := w.stats(&queue{})
			if st.Packets != 0 || st.Bytes != 0 || st.Errors != n || st.LastError == "" {
				t.Errorf("%d packets, none reached the file: packets %d, bytes %d, errors %d, last_error %q; want 0, 0, %d and the error",
					n, st.Packets, st.Bytes, st.Errors, st.LastError, n)
			}
		})
	}
}

// TestPcapFullDiskCountsWhatReachedTheFile: a disk that fills in the
// middle of a write keeps the blocks that fit. The packets whose blocks
// are whole in the file are counted written, every later one lost, and
// the two add up to what was handed in. The file is on a 1 MiB tmpfs in a
// private mount namespace. Needs root (GWLBPROXY_PRIVILEGED_TESTS=1).
func TestPcapFullDiskCountsWhatReachedTheFile(t *testing.T) {
	testenv.RequireRoot(t, "mounts a tmpfs in a private mount namespace")
	w := newTestPcapWriter(t)
	small := t.TempDir()
	pkt := tcpPacket(t, client, dest, make([]byte, 460))
	const n = 400 // about 210 KiB of blocks: one flush, cut short
	var name string
	err := testenv.InPrivateTmpfs(small, "size=1m", func() error {
		var st unix.Statfs_t
		if err := unix.Statfs(small, &st); err != nil {
			return err
		}
		free := int64(st.Bavail) * st.Bsize
		if err := os.WriteFile(filepath.Join(small, "filler"), make([]byte, free-100<<10), 0o600); err != nil {
			return err
		}
		w.create = func(base string) (*os.File, error) {
			name = filepath.Join(small, filepath.Base(base))
			return createFile(name, 0o600)
		}
		writeN(w, pkt, n, false)
		w.flush()
		got, err := countPcapngPackets(name)
		if err != nil {
			return err
		}
		st2 := w.stats(&queue{})
		t.Logf("%d packets, %d whole in the file; stats: packets %d errors %d", n, got, st2.Packets, st2.Errors)
		if got == 0 || got == n {
			return fmt.Errorf("%d of %d packets in the file: the disk did not fill in the middle", got, n)
		}
		if st2.Packets != uint64(got) || st2.Errors != uint64(n-got) || st2.Bytes != uint64(got*len(pkt)) {
			return fmt.Errorf("%d of %d packets whole in the file: packets %d, bytes %d, errors %d; want %d, %d, %d",
				got, n, st2.Packets, st2.Bytes, st2.Errors, got, got*len(pkt), n-got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// countPcapngPackets counts the whole packet blocks in a pcapng file that
// may end in a block cut short.
func countPcapngPackets(name string) (int, error) {
	f, err := os.Open(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	n := 0
	for {
		if _, _, err := r.ReadPacketData(); err != nil {
			return n, nil
		}
		n++
	}
}

// TestPcapFailingDiskBacksOff: a file system that takes new files but
// refuses their bytes (a block quota used up, EIO; statfs still shows
// room). After a failed write the writer waits before it starts another
// file, longer after each failure, and deletes a file left empty: the
// directory and the list of files stay bounded however many packets come,
// and every packet is counted lost.
func TestPcapFailingDiskBacksOff(t *testing.T) {
	w := newTestPcapWriter(t)
	opened := 0
	w.create = func(name string) (*os.File, error) {
		opened++
		f, err := createFile(name, 0o640)
		if err != nil {
			return nil, err
		}
		f.Close()
		return os.Open(name) // read-only: every write fails (EBADF)
	}
	pkt := tcpPacket(t, client, dest, []byte("x"))
	const n = 1000
	writeN(w, pkt, n, true)
	ents, err := os.ReadDir(w.cfg.PcapDir)
	if err != nil {
		t.Fatal(err)
	}
	if opened != 1 || len(ents) != 0 || len(w.files) != 0 || w.errs.Load() != n || w.packets.Load() != 0 {
		t.Errorf("%d packets, each flushed, on a disk refusing writes: %d files started, %d in the directory, %d listed, errors %d, packets %d; want 1, 0, 0, %d, 0",
			n, opened, len(ents), len(w.files), w.errs.Load(), w.packets.Load(), n)
	}
	// Each failure waits longer, up to pcapMaxBackoff.
	last := time.Duration(0)
	for i := range 10 {
		w.retryAt = time.Time{} // the wait is over
		writeN(w, pkt, 1, true)
		wait := time.Until(w.retryAt)
		if wait > pcapMaxBackoff || (wait <= last && last < pcapMaxBackoff-time.Second) {
			t.Fatalf("failure %d: the next file waits %v, after %v", i+2, wait, last)
		}
		last = wait
	}
	if last < pcapMaxBackoff-time.Second {
		t.Errorf("after 11 failures the next file waits %v, want about %v", last, pcapMaxBackoff)
	}
	// A write that reaches the file ends the back-off.
	w.create = func(name string) (*os.File, error) { return createFile(name, 0o640) }
	w.retryAt = time.Time{}
	writeN(w, pkt, 1, true)
	if w.backoff != 0 || w.packets.Load() != 1 {
		t.Errorf("after a write that succeeded: back-off %v, packets %d; want 0 and 1", w.backoff, w.packets.Load())
	}
}

// TestPcapOpenFailureCounted: while a file cannot be opened, each packet
// handed to the writer is lost and counted in errors, the ones that come
// while the writer waits to try again too.
func TestPcapOpenFailureCounted(t *testing.T) {
	cfg := Config{PcapDir: t.TempDir()}
	cfg.setDefaults()
	w, err := newPcapWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.create = func(name string) (*os.File, error) {
		return nil, &os.PathError{Op: "open", Path: filepath.Base(name), Err: errors.New("refused by the test")}
	}
	pkt := tcpPacket(t, client, dest, []byte("x"))
	for i := range 10 {
		w.write(&slot{endpoint: epA, cookie: uint32(i), ts: int64(i), buf: pkt, n: len(pkt)})
	}
	if e, p := w.errs.Load(), w.packets.Load(); e != 10 || p != 0 {
		t.Errorf("10 packets, no file: errors %d, packets %d; want 10, 0", e, p)
	}
}

// TestPcapLeavesTheDiskRoom: docs/ids.md: "A new file is also started
// only while the file system keeps a hundredth of its size free after it
// ... when there are none left packets are dropped and counted rather than
// filling the disk." On a 1 MiB tmpfs (a private mount namespace) with
// 40 KiB free, not enough for a 64 KiB file and the hundredth, no file is
// started, every packet is counted in errors, and the free space is left
// alone for the records, the key log and the host. Needs root
// (GWLBPROXY_PRIVILEGED_TESTS=1).
func TestPcapLeavesTheDiskRoom(t *testing.T) {
	testenv.RequireRoot(t, "mounts a tmpfs in a private mount namespace")
	dir := t.TempDir()
	pkt := tcpPacket(t, client, dest, make([]byte, 460))
	err := testenv.InPrivateTmpfs(dir, "size=1m", func() error {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return err
		}
		free := int64(st.Bavail) * st.Bsize
		if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, free-40<<10), 0o600); err != nil {
			return err
		}
		unix.Statfs(dir, &st)
		before := int64(st.Bavail) * st.Bsize
		cfg := Config{PcapDir: dir, RotateBytes: MinRotateBytes, MaxBytes: 1 << 20}
		cfg.setDefaults()
		w, err := newPcapWriter(cfg)
		if err != nil {
			return err
		}
		for i := range 200 {
			w.write(&slot{endpoint: epA, cookie: uint32(i), ts: int64(i), buf: pkt, n: len(pkt)})
			w.flush()
		}
		w.finish()
		unix.Statfs(dir, &st)
		after := int64(st.Bavail) * st.Bsize
		ents, _ := os.ReadDir(dir)
		var pcaps []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), filePrefix) {
				pcaps = append(pcaps, e.Name())
			}
		}
		t.Logf("free before %d, after %d; pcap files %v; packets %d errors %d", before, after, pcaps, w.packets.Load(), w.errs.Load())
		if len(pcaps) != 0 || after < before || w.errs.Load() != 200 {
			return fmt.Errorf("with 40 KiB free of 1 MiB: pcap files %v, free %d -> %d bytes, errors %d of 200 packets; want no file, the space left alone, 200 errors", pcaps, before, after, w.errs.Load())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPcapCountsWrittenUnderLoad: under a load that never lets the queue
// run empty, the writer never flushes on its own, but the write buffer
// goes to the file each time it fills: the packets it held are counted
// then, and the writer's list of packets in the buffer stays that
// buffer's size (it would otherwise grow with the file, to 64 MiB's worth
// of packets).
func TestPcapCountsWrittenUnderLoad(t *testing.T) {
	w := newTestPcapWriter(t)
	pkt := tcpPacket(t, client, dest, []byte("x"))
	room := cap(w.pending)
	const n = 20_000 // about 7 buffers
	writeN(w, pkt, n, false)
	inBuf := uint64(w.buf.Buffered()) / uint64(epbOverhead+len(pkt)+3) // at most
	if got := w.packets.Load(); got == 0 || got+inBuf+1 < n {
		t.Errorf("%d packets handed in, %d bytes in the buffer: %d counted written", n, w.buf.Buffered(), got)
	}
	if cap(w.pending) != room || len(w.pending) > room {
		t.Errorf("packets in the buffer: %d listed, room for %d (was %d)", len(w.pending), cap(w.pending), room)
	}
	w.finish()
	if got := w.packets.Load(); got != n {
		t.Errorf("after the file was finished: %d of %d packets counted written", got, n)
	}
}
