package records

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDialResult(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	_, err := net.Dial("tcp", addr)
	if got := DialResult(err); got != "refused" {
		t.Errorf("closed port: %q (%v)", got, err)
	}
	if got := DialResult(&net.OpError{Op: "dial", Err: timeoutErr{}}); got != "timeout" {
		t.Errorf("timeout: %q", got)
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestWriterLines: concurrent writers never interleave lines, and
// every sink gets every line.
func TestWriterLines(t *testing.T) {
	var a, b bytes.Buffer
	w := NewWriter(nil, &a, &b)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Write(&Record{Kind: "tcp", DestPort: uint16(i), Error: strings.Repeat("x", i)})
		}()
	}
	wg.Wait()
	if err := w.Close(context.Background()); err != nil { // delivers what is queued
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Fatal("sinks got different lines")
	}
	lines := strings.Split(strings.TrimSuffix(a.String(), "\n"), "\n")
	if len(lines) != 50 {
		t.Fatalf("%d lines, want 50", len(lines))
	}
	for _, l := range lines {
		var r Record
		if err := json.Unmarshal([]byte(l), &r); err != nil || r.Time.IsZero() || r.Time.Location() != time.UTC {
			t.Fatalf("line %q: %v", l, err)
		}
	}
}
