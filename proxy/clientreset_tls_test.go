package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwlbproxy/gwlbproxy/netstack"
	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestBumpedH2ClientResetTLSRecord: a client resets its bumped HTTP/2
// connection (a RST) while 100 streams wait on a silent origin. The
// connection's tls record says reset, as docs/records.md has it for a
// client that reset before the session ended, with the streams' records
// (the client went away). The HTTP/2 server's read took the reset from
// the stack first, and the client watch, asking the stack what broke the
// connection, was told nothing: the session ended on its own and its
// tls record said ok.
func TestBumpedH2ClientResetTLSRecord(t *testing.T) {
	// With one stream the session ends on its own before the watch's
	// abort, and says so itself (noteReclaimed); with 100 the abort comes
	// first.
	for _, streams := range []int{1, 100} {
		recs := ownResetRound(t, false, 1, streams)
		t.Logf("%d streams: %v", streams, summarize(recs))
		for _, rec := range recs {
			if rec.Kind == "tls" && (rec.Result != "reset" || !strings.Contains(rec.Error, "the client's connection broke")) {
				t.Errorf("%d streams: the tls record of a connection its client reset says %s, %q; want reset, the client's connection broke",
					streams, rec.Result, rec.Error)
			}
		}
	}
}

// ownResetRound opens conns bumped HTTP/2 connections of streams streams
// each, waiting on a silent origin, has the client reset the first, and
// (critical) makes memory critical right after, for 800 ms. It returns
// the records of the connection the client reset.
func ownResetRound(t *testing.T, critical bool, conns, streams int) []records.Record {
	t.Helper()
	var atOrigin atomic.Int64
	r := newBumpStallRig(t, 15*time.Minute, func(_ *bumpStallRig, _ http.ResponseWriter, req *http.Request) {
		atOrigin.Add(1)
		<-req.Context().Done()
	}, "h2")
	var raws []*rawClient
	for range conns {
		rc := dialRaw(t, r.client, r.dest)
		_ = rc.SetDeadline(time.Now().Add(time.Minute))
		c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"h2"}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.HandshakeContext(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if err := writeTinyFieldStreams(c, streams); err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = io.Copy(io.Discard, c) }()
		raws = append(raws, rc)
	}
	waitUntil(t, 30*time.Second, func() bool { return atOrigin.Load() == int64(conns*streams) }, "the streams at the origin")
	before := len(r.sink.parse(t))
	port := uint16(raws[0].LocalAddr().(*net.TCPAddr).Port)
	mine := func() []records.Record {
		var out []records.Record
		for _, rec := range r.sink.parse(t)[before:] {
			if rec.ClientPort == port {
				out = append(out, rec)
			}
		}
		return out
	}
	raws[0].reset() // the client's own RST
	if critical {
		// Once the appliance has seen the RST (its session records a
		// first stream's end), while the session winds the others down:
		// a reclaim that reset the connection before its RST came would
		// have said so rightly.
		waitUntil(t, 5*time.Second, func() bool { return len(mine()) > 0 }, "a first record of the connection the client reset")
		r.ns.SetMemoryPressure(netstack.MemoryCritical)
		r.p.SetMemoryPressure(netstack.MemoryCritical)
		// A few rounds of the reclaim, 250 ms apart, while the session
		// winds down.
		time.Sleep(800 * time.Millisecond)
		r.ns.SetMemoryPressure(netstack.MemoryAmple)
		r.p.SetMemoryPressure(netstack.MemoryAmple)
	}
	waitUntil(t, 5*time.Second, func() bool { return len(mine()) >= streams+1 }, "the records of the connection the client reset")
	return mine()
}

// summarize counts recs by kind, result and error (up to its first
// parenthesis).
func summarize(recs []records.Record) map[string]int {
	m := map[string]int{}
	for _, rec := range recs {
		e, _, _ := strings.Cut(rec.Error, "(")
		m[rec.Kind+" "+rec.Result+" "+e]++
	}
	return m
}
