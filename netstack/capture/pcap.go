package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// File names: gwlbproxy-<UTC start, to the microsecond>-<sequence>.pcapng,
// so that the names sort in the order the files were written.
const (
	filePrefix = "gwlbproxy-"
	fileSuffix = ".pcapng"
	fileTime   = "20060102T150405.000000Z"
)

// pcapng block and option codes this file writes itself (pcapgo writes the
// section and interface blocks).
const (
	blockEnhancedPacket = 6
	optEndOfOpt         = 0
	optComment          = 1
	optEPBFlags         = 2
	// epb_flags direction bits: inbound is what came from the GWLB (the
	// client's side), outbound what went back to it.
	epbInbound  = 1
	epbOutbound = 2
	// commentLen is the length of "flow_cookie=0x" and eight hex digits.
	commentLen = 22
	// epbOverhead is an enhanced packet block's size besides the packet
	// and its padding: header, epb_flags, the comment, end of options,
	// trailer. A synthesized packet has a second comment (plainOverhead).
	epbOverhead   = 28 + 8 + (4 + 24) + 4 + 4
	plainOverhead = 4 + (len(PlaintextComment)+3)&^3
	// pcapBufSize is the write buffer's: what a failed write may lose.
	pcapBufSize = 256 << 10
)

// pcapWriter writes packets to rotated pcapng files in one directory,
// keeping the directory's files under MaxBytes. It runs on one goroutine;
// stats are read from others.
type pcapWriter struct {
	cfg Config

	// The file being written, if any.
	f       *os.File
	buf     *bufio.Writer
	fileOut *countWriter // what buf wrote into f: what reached the file
	ng      *pcapgo.NgWriter
	ngOut   *countWriter     // what ng writes (section and interface blocks), into buf
	ifaces  map[ifaceKey]int // endpoint -> interface ID in this file
	// idbSize is the size of an endpoint's interface block, wire [0] and
	// plaintext [1]: the same for every endpoint, whose names all have
	// the same length.
	idbSize [2]int64
	opened  time.Time
	size    int64 // bytes written to the file (through buf)
	seq     uint64
	scr     []byte // scratch for a block
	// pending are the packets in buf, not yet known to be in the file.
	// They count as written (packets, bytes) once their bytes reach the
	// file, and as lost (errs) if writing them fails: a full disk loses
	// the whole buffer, thousands of packets, not one.
	pending []pendingPacket
	// retryAt is when a new file may be started after opening or writing
	// one failed; backoff is the wait after the last failure, doubled at
	// each failure in a row and ended by a write that reaches a file. A
	// file system that takes files but refuses their bytes (a quota, EIO)
	// would otherwise get a new file at every flush.
	retryAt time.Time
	backoff time.Duration
	// create opens a new file for writing (createFile with the mode
	// fileMode gives; tests put a pipe there, whose writes block as a
	// stalled disk's do).
	create func(name string) (*os.File, error)

	mu        sync.Mutex
	files     []fileInfo // finished files, oldest first
	lastError string

	packets, bytes, errs atomic.Uint64
	rotations, deleted   atomic.Uint64
	curSize              atomic.Int64 // size, for stats
	finished             atomic.Int64 // bytes of files
}

// ifaceKey names an interface of a file: an endpoint's wire packets, or
// its synthesized plaintext.
type ifaceKey struct {
	endpoint uint64
	plain    bool
}

type fileInfo struct {
	name string
	size int64
}

func newPcapWriter(cfg Config) (*pcapWriter, error) {
	if err := os.MkdirAll(cfg.PcapDir, 0o750); err != nil {
		return nil, fmt.Errorf("--pcap-dir: %w", err)
	}
	mode := fileMode(cfg.Plaintext)
	create := func(name string) (*os.File, error) { return createFile(name, mode) }
	w := &pcapWriter{cfg: cfg, scr: make([]byte, 0, largeSlot+epbOverhead+plainOverhead+4), create: create,
		// Room for a buffer of small packets: no allocation per packet.
		pending: make([]pendingPacket, 0, pcapBufSize/(epbOverhead+20)),
	}
	for i, plain := range []bool{false, true} {
		n, err := interfaceBlockSize(plain)
		if err != nil {
			return nil, fmt.Errorf("--pcap-dir: sizing an interface block: %w", err)
		}
		w.idbSize[i] = n
	}
	// Files from earlier runs count against the cap, and go first.
	ents, err := os.ReadDir(cfg.PcapDir)
	if err != nil {
		return nil, fmt.Errorf("--pcap-dir: %w", err)
	}
	var total int64
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), filePrefix) || !strings.HasSuffix(e.Name(), fileSuffix) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if info.Mode().Perm()&^mode != 0 {
			// An earlier run's file may hold plaintext this run's mode
			// would keep from the group: make it no more open.
			if err := os.Chmod(filepath.Join(cfg.PcapDir, e.Name()), info.Mode().Perm()&mode); err != nil {
				slog.Warn("pcap: restricting an earlier file's mode", "file", e.Name(), "err", err)
			}
		}
		w.files = append(w.files, fileInfo{name: e.Name(), size: info.Size()})
		total += info.Size()
	}
	slices.SortFunc(w.files, func(a, b fileInfo) int { return strings.Compare(a.name, b.name) })
	w.finished.Store(total)
	// Test that the directory takes files now, not at the first packet.
	probe, err := os.CreateTemp(cfg.PcapDir, ".probe-*")
	if err != nil {
		return nil, fmt.Errorf("--pcap-dir: %w", err)
	}
	probe.Close()
	os.Remove(probe.Name())
	return w, nil
}

// run writes what q holds until done, then what is left in q.
func (w *pcapWriter) run(q *queue, done <-chan struct{}) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case s := <-q.full:
			if !q.take(s, w.write) {
				return
			}
			continue
		default:
		}
		// Nothing queued: what was written goes to the file now.
		w.flush()
		select {
		case s := <-q.full:
			if !q.take(s, w.write) {
				return
			}
		case now := <-tick.C:
			if w.f != nil && now.Sub(w.opened) >= w.cfg.RotateAge {
				w.finish()
			}
		case <-done:
			for {
				select {
				case s := <-q.full:
					if !q.take(s, w.write) {
						return
					}
				default:
					return
				}
			}
		}
	}
}

// write adds one packet to the current file, opening one (and rotating)
// as needed.
func (w *pcapWriter) write(s *slot) {
	pkt := s.data()
	key := ifaceKey{s.endpoint, s.plain}
	// The packet's block, and its interface's if this file has none yet:
	// both count against RotateBytes.
	need := int64(epbOverhead + plainOverhead + len(pkt) + 3)
	if _, ok := w.ifaces[key]; !ok || w.f == nil {
		need += w.idbSize[b2i(s.plain)]
	}
	if w.f != nil && w.size+need > w.cfg.RotateBytes {
		w.finish()
	}
	if w.f == nil {
		if time.Now().Before(w.retryAt) {
			w.errs.Add(1) // the last file failed a moment ago
			return
		}
		if err := w.open(); err != nil {
			w.fail(err, 1)
			return
		}
	}
	id, ok := w.ifaces[key]
	if !ok {
		before := w.ngOut.n
		var err error
		id, err = w.ng.AddInterface(endpointInterface(s.endpoint, s.plain))
		if err == nil {
			err = w.ng.Flush() // into w.buf, ahead of the packet
		}
		if err != nil {
			w.fail(err, 1)
			return
		}
		w.ifaces[key] = id
		w.size += w.ngOut.n - before
	}
	b := appendEPB(w.scr[:0], id, s)
	if _, err := w.buf.Write(b); err != nil {
		w.fail(err, 1)
		return
	}
	w.size += int64(len(b))
	w.curSize.Store(w.size)
	w.pending = append(w.pending, pendingPacket{end: w.size, n: len(pkt)})
	if w.pending[0].end <= w.fileOut.n {
		// The buffer filled and went to the file: under a load that never
		// lets run flush, this is where its packets are counted.
		w.settle()
	}
}

// endpointInterface is the pcapng interface of an endpoint's wire packets,
// or of its synthesized plaintext.
func endpointInterface(endpoint uint64, plain bool) pcapgo.NgInterface {
	name := EndpointName(endpoint)
	desc := "inner packets of GWLB endpoint " + name
	if plain {
		desc = "decrypted side of the bumped TLS connections of GWLB endpoint " + name + ", synthesized by gwlbproxy (not wire traffic)"
		name += plainSuffix
	}
	return pcapgo.NgInterface{Name: name, Description: desc, OS: runtime.GOOS, LinkType: layers.LinkTypeRaw}
}

// interfaceBlockSize is the size of the interface block pcapgo writes for
// an endpoint: measured, so that it stays right whatever options pcapgo
// adds.
func interfaceBlockSize(plain bool) (int64, error) {
	cw := &countWriter{w: io.Discard}
	ng, err := pcapgo.NewNgWriterInterface(cw, endpointInterface(0, false), pcapgo.DefaultNgWriterOptions)
	if err != nil {
		return 0, err
	}
	if err := ng.Flush(); err != nil {
		return 0, err
	}
	before := cw.n
	if _, err := ng.AddInterface(endpointInterface(0, plain)); err != nil {
		return 0, err
	}
	if err := ng.Flush(); err != nil {
		return 0, err
	}
	return cw.n - before, nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// appendEPB appends an enhanced packet block for s: the packet, its
// direction (epb_flags) and its flow cookie (a comment); a synthesized
// packet has PlaintextComment as a second comment.
func appendEPB(b []byte, iface int, s *slot) []byte {
	pkt := s.data()
	pad := (4 - len(pkt)&3) & 3
	total := epbOverhead + len(pkt) + pad
	if s.plain {
		total += plainOverhead
	}
	le := binary.LittleEndian
	b = le.AppendUint32(b, blockEnhancedPacket)
	b = le.AppendUint32(b, uint32(total))
	b = le.AppendUint32(b, uint32(iface))
	b = le.AppendUint32(b, uint32(uint64(s.ts)>>32))
	b = le.AppendUint32(b, uint32(s.ts))
	b = le.AppendUint32(b, uint32(len(pkt)))
	b = le.AppendUint32(b, uint32(len(pkt)))
	b = append(b, pkt...)
	var zero [4]byte
	b = append(b, zero[:pad]...)
	// epb_flags: the direction.
	b = le.AppendUint16(b, optEPBFlags)
	b = le.AppendUint16(b, 4)
	dir := uint32(epbInbound)
	if s.out {
		dir = epbOutbound
	}
	b = le.AppendUint32(b, dir)
	// opt_comment: flow_cookie=0x%08x, padded to 24 bytes.
	b = le.AppendUint16(b, optComment)
	b = le.AppendUint16(b, commentLen)
	b = append(b, "flow_cookie=0x"...)
	const hex = "0123456789abcdef"
	for i := 28; i >= 0; i -= 4 {
		b = append(b, hex[(s.cookie>>uint(i))&0xf])
	}
	b = append(b, 0, 0)
	if s.plain {
		b = le.AppendUint16(b, optComment)
		b = le.AppendUint16(b, uint16(len(PlaintextComment)))
		b = append(b, PlaintextComment...)
		b = append(b, zero[:(4-len(PlaintextComment)&3)&3]...)
	}
	b = le.AppendUint32(b, optEndOfOpt)
	b = le.AppendUint32(b, uint32(total))
	return b
}

// open starts a new file, first deleting the oldest files for its room
// under MaxBytes.
func (w *pcapWriter) open() error {
	w.makeRoom(w.cfg.RotateBytes)
	if err := w.diskRoom(); err != nil {
		return err
	}
	now := time.Now()
	w.seq++
	name := fmt.Sprintf("%s%s-%06d%s", filePrefix, now.UTC().Format(fileTime), w.seq%1_000_000, fileSuffix)
	f, err := w.create(filepath.Join(w.cfg.PcapDir, name))
	if err != nil {
		return err
	}
	w.fileOut = &countWriter{w: f}
	w.buf = bufio.NewWriterSize(w.fileOut, pcapBufSize)
	w.ngOut = &countWriter{w: w.buf}
	opts := pcapgo.DefaultNgWriterOptions
	opts.SectionInfo.Application = "gwlbproxy"
	// pcapgo writes a first interface with the section: it is the
	// appliance itself, and carries no packets.
	ng, err := pcapgo.NewNgWriterInterface(w.ngOut, pcapgo.NgInterface{
		Name: "gwlbproxy", Description: "the appliance (no packets: each GWLB endpoint has an interface of its own)",
		OS: runtime.GOOS, LinkType: layers.LinkTypeRaw,
	}, opts)
	if err == nil {
		err = ng.Flush()
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	w.f, w.ng, w.opened = f, ng, now
	w.ifaces = make(map[ifaceKey]int)
	w.size = int64(w.buf.Buffered())
	w.curSize.Store(w.size)
	return nil
}

// fileMode is the mode pcap files are created with. Wire packets are
// what a tap on the network would see, so the appliance's group (an IDS,
// an auditor) may read them: 0640. With plaintext the files hold the
// decrypted bodies, headers and cookies of bumped connections, what the
// TLS key log exposes, and are kept to the appliance's user as the key
// log is: 0600.
func fileMode(plaintext bool) os.FileMode {
	if plaintext {
		return 0o600
	}
	return 0o640
}

// createFile creates a new pcap file for writing, with mode perm.
func createFile(name string, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
}

// makeRoom deletes the oldest finished files until room more bytes fit
// under MaxBytes.
func (w *pcapWriter) makeRoom(room int64) {
	for w.finished.Load()+room > w.cfg.MaxBytes && w.deleteOldest() {
	}
}

// deleteOldest deletes the oldest finished file, if there is one.
func (w *pcapWriter) deleteOldest() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.files) == 0 {
		return false
	}
	old := w.files[0]
	if err := os.Remove(filepath.Join(w.cfg.PcapDir, old.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("pcap: deleting the oldest file", "file", old.name, "err", err)
		w.lastError = err.Error()
	}
	w.files = w.files[1:]
	w.finished.Add(-old.size)
	w.deleted.Add(1)
	return true
}

// diskRoom makes sure the file system keeps a hundredth of its size free
// besides a whole new file, whatever else fills it: it deletes the oldest
// files for it, and refuses to start a file when that is not enough.
func (w *pcapWriter) diskRoom() error {
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(w.cfg.PcapDir, &st); err != nil {
			return nil // cannot tell: the byte cap still holds
		}
		free := int64(st.Bavail) * st.Bsize
		need := w.cfg.RotateBytes + int64(st.Blocks)*st.Bsize/100
		if free >= need {
			return nil
		}
		if !w.deleteOldest() {
			return fmt.Errorf("file system of %s nearly full: %d bytes free, a new file needs %d", w.cfg.PcapDir, free, need)
		}
	}
}

// finish writes out and closes the current file.
func (w *pcapWriter) finish() {
	if w.f == nil {
		return
	}
	if err := w.buf.Flush(); err != nil {
		w.fail(fmt.Errorf("finishing %s: %w", filepath.Base(w.f.Name()), err), 0)
		w.rotations.Add(1)
		return
	}
	w.settle()
	w.backoff = 0
	if err := w.f.Close(); err != nil {
		// The bytes were handed to the kernel: whether a failure it
		// reports only now lost any cannot be told, so it is logged.
		if w.setError(err) {
			slog.Warn("pcap: closing a file failed; its last packets may be missing", "file", w.f.Name(), "err", err)
		}
	}
	w.drop()
	w.rotations.Add(1)
}

func (w *pcapWriter) flush() {
	if w.buf != nil && w.buf.Buffered() > 0 {
		if err := w.buf.Flush(); err != nil {
			w.fail(err, 0)
			return
		}
		w.settle()
		w.backoff = 0
	}
}

func (w *pcapWriter) close() error {
	w.finish()
	return nil
}

func (w *pcapWriter) stats(q *queue) *PcapStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := &PcapStats{
		SinkStats: SinkStats{Packets: w.packets.Load(), Bytes: w.bytes.Load(), Dropped: q.dropped.Load(), Errors: w.errs.Load()},
		Files:     len(w.files), DiskBytes: w.finished.Load() + w.curSize.Load(),
		Rotations: w.rotations.Load(), FilesDeleted: w.deleted.Load(), LastError: w.lastError,
	}
	if w.curSize.Load() > 0 {
		s.Files++
	}
	return s
}
