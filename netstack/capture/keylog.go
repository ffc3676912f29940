package capture

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
)

// KeyLogMaxBytes caps the key log file. Every bumped connection appends
// about 1.4 KB, so a client opening bumped connections in a loop would
// otherwise fill the file system; the package's logrotate stanza rotates
// the documented path well before (maxsize 256M), and this holds whatever
// the path. 1 GiB is some 750,000 connections' secrets.
const KeyLogMaxBytes = 1 << 30

// KeyLog is a TLS key log file (NSS key log format, as crypto/tls writes
// it through tls.Config.KeyLogWriter): with it, Wireshark and tshark
// decrypt captured TLS. It holds secrets.
//
// A write that fails is counted and logged once, never returned:
// crypto/tls would fail the handshake, and a full disk must not stop the
// traffic. A write that would take the file past its cap (KeyLogMaxBytes)
// is dropped and counted the same way, until the file is rotated. Writes
// after Close are dropped.
type KeyLog struct {
	mu        sync.Mutex
	f         *os.File
	size      int64 // the file's size as last known (rotation truncates it behind our back)
	max       int64
	errs      atomic.Uint64
	dropped   atomic.Uint64
	warned    bool
	capWarned bool // since the file last had room
}

// OpenKeyLog opens (appends to) the key log file path, with mode 0600: it
// is made so, and an existing file readable by others is made private.
func OpenKeyLog(path string) (*KeyLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--tls-keylog: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("--tls-keylog: making %s private: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("--tls-keylog: %w", err)
	}
	return &KeyLog{f: f, size: fi.Size(), max: KeyLogMaxBytes}, nil
}

// Write appends one or more key log lines.
func (k *KeyLog) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.f == nil {
		return len(p), nil
	}
	if k.size+int64(len(p)) > k.max && !k.room(len(p)) {
		k.dropped.Add(1)
		if !k.capWarned {
			k.capWarned = true
			slog.Warn("tls key log: the file is at its cap; the secrets of new connections are left out until it is rotated",
				"file", k.f.Name(), "max_bytes", k.max)
		}
		return len(p), nil
	}
	n, err := k.f.Write(p)
	k.size += int64(n)
	if err != nil {
		k.errs.Add(1)
		if !k.warned {
			k.warned = true
			slog.Warn("tls key log: writing failed; the secrets of some connections are missing from it", "err", err)
		}
	}
	return len(p), nil
}

// room reports whether n more bytes fit under the cap by the file's own
// size: logrotate's copytruncate empties it without telling us. k.mu is
// held.
func (k *KeyLog) room(n int) bool {
	fi, err := k.f.Stat()
	if err != nil {
		return false
	}
	k.size = fi.Size()
	if k.size+int64(n) > k.max {
		return false
	}
	k.capWarned = false
	return true
}

// Errors returns how many writes failed.
func (k *KeyLog) Errors() uint64 { return k.errs.Load() }

// Dropped returns how many writes were left out because the file was at
// its cap.
func (k *KeyLog) Dropped() uint64 { return k.dropped.Load() }

// Close closes the file; later writes are dropped.
func (k *KeyLog) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.f == nil {
		return nil
	}
	err := k.f.Close()
	k.f = nil
	return err
}
