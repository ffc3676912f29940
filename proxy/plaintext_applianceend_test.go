package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPlaintextOfReclaimedSession: bumped HTTP/1 sessions idle between
// requests, tapped; memory critical makes the stack reset the newest: the
// plaintext of each ends with the destination's side's RST, as the client
// saw it. The read the reset failed, taken before any Abort, read as the
// client's reset (4 of 4; review r2s24 F1).
func TestPlaintextOfReclaimedSession(t *testing.T) {
	sink := &endSink{}
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour, plaintext: sink,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hi") }})
	opened := 0
	reclaimAndRecords(t, r.stallRig, []string{"tls"}, func() {
		r.answeredOnce(t)
		opened++
		waitUntil(t, 5*time.Second, func() bool { return countKind(r.sink.parse(t), "http") == opened }, "the first request's record")
	})
	time.Sleep(500 * time.Millisecond)
	sink.mu.Lock()
	streams := slices.Clone(sink.streams)
	sink.mu.Unlock()
	counts := map[string]int{}
	for _, s := range streams {
		ev := s.get()
		key := "open"
		switch {
		case slices.Contains(ev, "ServerReset"):
			key = "ServerReset"
		case slices.Contains(ev, "ClientReset"):
			key = "ClientReset"
		case slices.Contains(ev, "Close"):
			key = "FINs"
		}
		counts[key]++
	}
	t.Logf("streams %d: %v", len(streams), counts)
	if counts["ServerReset"] == 0 {
		t.Error("no stream ended with the appliance's reset")
	}
	if counts["ClientReset"] > 0 {
		t.Errorf("%d streams of connections the appliance reset (memory reclaim) end with the client's RST", counts["ClientReset"])
	}
}

// TestPlaintextOfSessionAtShutdown: a bumped HTTP/1 session idle between
// requests, tapped; the stacks close, resetting the client: the plaintext
// ends with the destination's side's RST, never the client's (3 of 10
// runs showed the client's: the read took the stacks' reset first), and
// the tls record says the shutdown ended it (it said ok in those runs).
func TestPlaintextOfSessionAtShutdown(t *testing.T) {
	for range 10 {
		plaintextOfSessionAtShutdown(t)
	}
}

func plaintextOfSessionAtShutdown(t *testing.T) {
	sink := &endSink{}
	r := newBumpRig(t, bumpRigOptions{doc: "policy: {default: bump}\n", timeout: time.Hour, plaintext: sink,
		handler: func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hi") }})
	r.answeredOnce(t)
	waitUntil(t, 5*time.Second, func() bool { return countKind(r.sink.parse(t), "http") == 1 }, "the request's record")
	r.p.StacksClosing()
	r.ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.p.Wait(ctx)
	rec, ok := r.tlsRecord(t, 5*time.Second)
	t.Logf("tls record (%v): %s %q", ok, rec.Result, rec.Error)
	// The record says the shutdown ended it, whichever came first:
	// goproxy's read of the reset or the client watch's Abort.
	if !ok || rec.Result != "reset" || !strings.Contains(rec.Error, "ended by the appliance's shutdown") {
		t.Errorf("tls record %s %q, want reset, ended by the appliance's shutdown", rec.Result, rec.Error)
	}
	ev := sink.ends(t)
	t.Logf("plaintext ends %v", ev)
	if slices.Contains(ev, "ClientReset") || !slices.Contains(ev, "ServerReset") {
		t.Errorf("the appliance's shutdown shown as %v, want its RST", ev)
	}
}

// bumpedGet dials the rig's destination as big.example, bumped, and sends
// GET path; the client's deadline is 20 s away.
func (r *bumpStallRig) bumpedGet(t *testing.T, path string) *tls.Conn {
	t.Helper()
	tc := tls.Client(r.dial0(t, r.dest), &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(tc, "GET "+path+" HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return tc
}

// answeredOnce is bumpedGet of /x with its whole answer read: the session
// waits for the next request once the request's record is out.
func (r *bumpStallRig) answeredOnce(t *testing.T) *tls.Conn {
	t.Helper()
	tc := r.bumpedGet(t, "/x")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("reading the first response: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return tc
}
