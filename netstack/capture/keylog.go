package capture

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
)

// KeyLog is a TLS key log file (NSS key log format, as crypto/tls writes
// it through tls.Config.KeyLogWriter): with it, Wireshark and tshark
// decrypt captured TLS. It holds secrets.
//
// A write that fails is counted and logged once, never returned:
// crypto/tls would fail the handshake, and a full disk must not stop the
// traffic. Writes after Close are dropped.
type KeyLog struct {
	mu     sync.Mutex
	f      *os.File
	errs   atomic.Uint64
	warned bool
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
	return &KeyLog{f: f}, nil
}

// Write appends one or more key log lines.
func (k *KeyLog) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.f == nil {
		return len(p), nil
	}
	if _, err := k.f.Write(p); err != nil {
		k.errs.Add(1)
		if !k.warned {
			k.warned = true
			slog.Warn("tls key log: writing failed; the secrets of some connections are missing from it", "err", err)
		}
	}
	return len(p), nil
}

// Errors returns how many writes failed.
func (k *KeyLog) Errors() uint64 { return k.errs.Load() }

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
