package proxy

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestLingerShareCutsCountOnlyCuts: a client whose one lingering
// connection is taken closes downloads whose upload its destination has
// all acknowledged, FIN then reset (as browsers and curl close with an
// answer unread). The one look finds each delivered: nothing is cut, and
// linger_share_cuts, which counted every refusal of the share before the
// look, counts only the records that say the tail was not delivered.
func TestLingerShareCutsCountOnlyCuts(t *testing.T) {
	r := newShareRig(t, 8, 300*time.Millisecond, Config{MaxLingeringPerClient: 1})
	r.p.SetWriteStallTimeout(time.Minute)
	held, _ := heldDest(t)
	uploadWholeThenReset(t, r.dialWithinShare(t, held, 10*time.Second), 64<<10) // the one linger
	talk := sendingDest(t)
	const n = 3
	for range n {
		c := r.dialWithinShare(t, talk, 10*time.Second)
		if _, err := c.Write([]byte("GET / small upload\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Read(make([]byte, 4096))
		if err := c.halfClose(); err != nil {
			t.Fatal(err)
		}
		waitFINAcked(t, c)
		time.Sleep(200 * time.Millisecond) // the destination reads and acknowledges it all
		c.reset()
	}
	var recs []records.Record
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if recs = r.sink.parse(t); len(recs) >= n {
			break
		}
	}
	cut := 0
	for _, rec := range recs {
		if strings.Contains(rec.Error, "not delivered") {
			cut++
		}
	}
	if got := r.p.Stats().LingerShareCuts; len(recs) != n || got != uint64(cut) {
		t.Errorf("%d records, %d saying the tail was not delivered; linger_share_cuts %d, want %d records and the cuts they say", len(recs), cut, got, n)
	}
}

// sendingDest reads all it gets and sends a KiB every 5 ms (a download),
// never closing while the test runs.
func sendingDest(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }()
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				tick := time.NewTicker(5 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-done:
						return
					case <-tick.C:
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
