package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// A relay direction that goes quiet gives its big buffer back and waits on
// a small one, and loses nothing: bytes before, during and after the quiet
// spells arrive whole and in order, and the end of the stream still passes.
func TestHalfRelayQuietSpells(t *testing.T) {
	defer func(d time.Duration) { relayIdleAfter = d }(relayIdleAfter)
	relayIdleAfter = 50 * time.Millisecond
	srcW, src := net.Pipe()
	dst, dstR := net.Pipe()
	var want bytes.Buffer
	go func() {
		defer srcW.Close()
		for i, size := range []int{1, 100_000, 3, relaySmallBuf, relaySmallBuf + 1, 70_000} {
			chunk := bytes.Repeat([]byte{byte('a' + i)}, size)
			want.Write(chunk)
			if _, err := srcW.Write(chunk); err != nil {
				return
			}
			time.Sleep(3 * relayIdleAfter) // quiet: the next read is on the small buffer
		}
	}()
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := halfRelay(dst, src)
		done <- result{n, err}
	}()
	got, err := io.ReadAll(dstR)
	if err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.n != int64(len(got)) {
		t.Fatalf("halfRelay: %d bytes, %v (the reader got %d)", r.n, r.err, len(got))
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("relayed %d bytes, want %d, or in another order", len(got), want.Len())
	}
}
