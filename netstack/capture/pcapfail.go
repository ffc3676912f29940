package capture

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// What the pcap writer does when the file system fails it: it counts each
// packet lost, drops the file, and waits before it starts another.

// pcapMaxBackoff is the longest the writer waits before it starts a new
// file after a failure: the wait starts at a second and doubles with each
// failure in a row.
const pcapMaxBackoff = time.Minute

// pendingPacket is a packet in the write buffer: where its block ends in
// the file, and the packet's length.
type pendingPacket struct {
	end int64
	n   int
}

// settle counts the pending packets whose blocks reached the file as
// written, and keeps the others pending.
func (w *pcapWriter) settle() {
	reached := w.fileOut.n
	var n, bytes uint64
	for _, p := range w.pending {
		if p.end > reached {
			break
		}
		n++
		bytes += uint64(p.n)
	}
	w.packets.Add(n)
	w.bytes.Add(bytes)
	w.pending = w.pending[:copy(w.pending, w.pending[n:])]
}

// lose counts the pending packets that reached the file as written, and
// the others as lost: writing the file failed. It returns how many were
// lost.
func (w *pcapWriter) lose() (lost uint64) {
	w.settle()
	lost = uint64(len(w.pending))
	w.errs.Add(lost)
	w.pending = w.pending[:0]
	return lost
}

// fail counts the packets lost to err (lost of them besides those in the
// write buffer that never reached the file), logs err when it is new, and
// drops the current file: a packet after the back-off opens another.
func (w *pcapWriter) fail(err error, lost uint64) {
	w.errs.Add(lost)
	w.backoff = min(max(2*w.backoff, time.Second), pcapMaxBackoff)
	w.retryAt = time.Now().Add(w.backoff)
	if w.f != nil {
		lost += w.lose()
		w.f.Close()
		w.drop()
	}
	if w.setError(err) {
		slog.Warn("pcap: writing packets failed; they are dropped and counted", "dir", w.cfg.PcapDir, "err", err, "lost", lost, "retry_in", w.backoff)
	}
}

// drop lists the closed current file with the finished ones, as large as
// it is on disk, and forgets it. A file left empty by a failed write is
// deleted instead: its size would never make --pcap-max-bytes delete it.
func (w *pcapWriter) drop() {
	name := filepath.Base(w.f.Name())
	size, regular := w.size, false
	if st, serr := os.Stat(w.f.Name()); serr == nil {
		size, regular = st.Size(), st.Mode().IsRegular()
	}
	if size == 0 && regular {
		if err := os.Remove(w.f.Name()); err == nil || errors.Is(err, os.ErrNotExist) {
			w.f, w.buf, w.fileOut, w.ng, w.size = nil, nil, nil, nil, 0
			w.curSize.Store(0)
			return
		}
	}
	w.mu.Lock()
	w.files = append(w.files, fileInfo{name: name, size: size})
	w.finished.Add(size)
	w.mu.Unlock()
	w.f, w.buf, w.fileOut, w.ng, w.size = nil, nil, nil, nil, 0
	w.curSize.Store(0)
}

func (w *pcapWriter) setError(err error) (changed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	changed = w.lastError != err.Error()
	w.lastError = err.Error()
	return changed
}
