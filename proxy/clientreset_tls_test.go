package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// TestBumpedH2ClientResetTLSRecord: a client resets its bumped HTTP/2
// connection (a RST, no FIN) while its streams wait on a silent origin.
// The connection's tls record says reset, as docs/records.md has it for
// a client that reset while a request was under way, with the streams'
// records (the client went away). The HTTP/2 server's read took the reset
// from the stack first, and the client watch, asking the stack what broke
// the connection, was told nothing: the session ended on its own and its
// tls record said ok.
func TestBumpedH2ClientResetTLSRecord(t *testing.T) {
	// With one stream the session ends on its own before the watch's
	// abort, and says so itself at its end; with 100 the abort comes
	// first.
	for _, streams := range []int{1, 100} {
		recs := ownResetRound(t, streams)
		t.Logf("%d streams: %v", streams, summarize(recs))
		var tlsRecs int
		for _, rec := range recs {
			if rec.Kind != "tls" {
				continue
			}
			tlsRecs++
			if rec.Result != "reset" || !strings.Contains(rec.Error, "the client's connection broke") {
				t.Errorf("%d streams: the tls record of a connection its client reset says %s, %q; want reset, the client's connection broke",
					streams, rec.Result, rec.Error)
			}
		}
		if tlsRecs != 1 {
			t.Errorf("%d streams: %d tls records, want 1", streams, tlsRecs)
		}
	}
}

// ownResetRound opens a bumped HTTP/2 connection of streams streams,
// waiting on a silent origin, and has the client reset it. It returns the
// records of that connection: one per stream and the connection's.
func ownResetRound(t *testing.T, streams int) []records.Record {
	t.Helper()
	var atOrigin atomic.Int64
	r := newBumpStallRig(t, 15*time.Minute, func(_ *bumpStallRig, _ http.ResponseWriter, req *http.Request) {
		atOrigin.Add(1)
		<-req.Context().Done()
	}, "h2")
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
	waitUntil(t, 30*time.Second, func() bool { return atOrigin.Load() == int64(streams) }, "the streams at the origin")
	port := uint16(rc.LocalAddr().(*net.TCPAddr).Port)
	mine := func() []records.Record {
		var out []records.Record
		for _, rec := range r.sink.parse(t) {
			if rec.ClientPort == port {
				out = append(out, rec)
			}
		}
		return out
	}
	rc.reset() // the client's own RST
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

// resetAfterResponsesConns is how many connections the tests of a reset
// between requests open: the watch and the server's read race for the
// reset, and a rule kept only when one side wins fails on some of them.
const resetAfterResponsesConns = 8

// TestBumpedH2ClientResetAfterResponsesTLSRecord: an HTTP/2 client that
// has all its responses resets its bumped connection (a RST and no FIN,
// as real curl --http2 does when it closes with the appliance's last
// frames unread). No request was under way: the client lost nothing, and
// the connection's record says ok, with no error, as for a reset after a
// FIN between requests.
func TestBumpedH2ClientResetAfterResponsesTLSRecord(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}, "h2")
	for i := range resetAfterResponsesConns {
		c := dialRaw(t, r.client, r.dest)
		tc := tls.Client(c, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"h2"}})
		cc, err := (&http2.Transport{}).NewClientConn(tc)
		if err != nil {
			t.Fatalf("connection %d: HTTP/2 through the appliance: %v", i, err)
		}
		for range 2 {
			req, _ := http.NewRequest(http.MethodGet, "https://big.example/small", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || string(body) != "hello" {
				t.Fatalf("connection %d: body %q, %v; want hello", i, body, err)
			}
		}
		c.reset()
	}
	expectTLSRecordsOK(t, r)
}

// TestBumpedH1ClientResetAfterResponseTLSRecord: the same for an HTTP/1
// client, which resets its bumped connection once it has its response
// and goproxy waits for its next request. Its record said reset whenever
// the watch took the reset before goproxy's read did.
func TestBumpedH1ClientResetAfterResponseTLSRecord(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}, "http/1.1")
	for i := range resetAfterResponsesConns {
		c := dialRaw(t, r.client, r.dest)
		tc := tls.Client(c, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		if _, err := io.WriteString(tc, "GET /small HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || string(body) != "hello" {
			t.Fatalf("connection %d: body %q, %v; want hello", i, body, err)
		}
		// The response's record is written as goproxy's loop closes its
		// body, just after the client has the last byte: the request is
		// over for the appliance too once it is there.
		port := uint16(c.LocalAddr().(*net.TCPAddr).Port)
		waitUntil(t, 5*time.Second, func() bool {
			for _, rec := range r.sink.parse(t) {
				if rec.Kind == "http" && rec.ClientPort == port {
					return true
				}
			}
			return false
		}, "the request's record")
		c.reset()
	}
	expectTLSRecordsOK(t, r)
}

// expectTLSRecordsOK waits for the tls records of r's
// resetAfterResponsesConns connections and checks each says ok, with no
// error.
func expectTLSRecordsOK(t *testing.T, r *bumpStallRig) {
	t.Helper()
	var tlsRecs []records.Record
	waitUntil(t, 10*time.Second, func() bool {
		tlsRecs = tlsRecs[:0]
		for _, rec := range r.sink.parse(t) {
			if rec.Kind == "tls" {
				tlsRecs = append(tlsRecs, rec)
			}
		}
		return len(tlsRecs) == resetAfterResponsesConns
	}, "the connections' records")
	for _, rec := range tlsRecs {
		if rec.Result != "ok" || rec.Error != "" {
			t.Errorf("client port %d: the record of a connection reset between requests says %s, %q; want ok: no request was under way",
				rec.ClientPort, rec.Result, rec.Error)
		}
	}
}
