package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/gwlbproxy/gwlbproxy/proxy/records"
)

// midDownloadConns is how many connections the tests of a reset
// mid-download open: the response's writer and the client watch race for
// the reset the stack reports once, and a rule kept only when one side
// wins fails on some of them.
const midDownloadConns = 10

// TestBumpedH1ClientResetMidDownloadRecords: an HTTP/1 client resets its
// bumped connection (a RST, no FIN) while its response streams from an
// origin that floods. A request was under way: the connection's tls
// record and the request's say reset, "the client's connection broke", as
// docs/records.md has it. The write of the response took the reset from
// the stack, which reports it once, and kept nothing: the watch was told
// nothing, the tls record said ok and the request's error.
func TestBumpedH1ClientResetMidDownloadRecords(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, (*bumpStallRig).flood)
	for i := range midDownloadConns {
		rc := dialRaw(t, r.client, r.dest)
		c := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
		if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 256<<10)); err != nil {
			t.Fatalf("connection %d: reading the body: %v", i, err)
		}
		rc.reset()
		expectResetRecords(t, r, rc, i)
	}
}

// TestBumpedH2ClientResetMidDownloadRecords is the same for an HTTP/2
// client: x/net's frame writer took the reset.
func TestBumpedH2ClientResetMidDownloadRecords(t *testing.T) {
	r := newBumpStallRig(t, time.Hour, (*bumpStallRig).flood, "h2")
	for i := range midDownloadConns {
		rc := dialRaw(t, r.client, r.dest)
		tc := tls.Client(rc, &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"h2"}})
		cc, err := (&http2.Transport{}).NewClientConn(tc)
		if err != nil {
			t.Fatalf("connection %d: HTTP/2 through the appliance: %v", i, err)
		}
		req, _ := http.NewRequest(http.MethodGet, "https://big.example/big", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 256<<10)); err != nil {
			t.Fatalf("connection %d: reading the body: %v", i, err)
		}
		rc.reset()
		expectResetRecords(t, r, rc, i)
	}
}

// expectResetRecords waits for the tls record of rc, connection i of r,
// which its client reset while its one request was under way, and checks
// that it and the request's record say reset, the client's connection
// broke.
func expectResetRecords(t *testing.T, r *bumpStallRig, rc *rawClient, i int) {
	t.Helper()
	tlsRec, httpRec := connRecords(t, r, rc, 10*time.Second, "the records of the connection the client reset")
	for _, rec := range []*records.Record{tlsRec, httpRec} {
		if rec.Result != "reset" || !strings.Contains(rec.Error, "the client's connection broke") {
			t.Errorf("connection %d: the %s record of a connection its client reset mid-response says %s, %q; want reset, the client's connection broke",
				i, rec.Kind, rec.Result, rec.Error)
		}
	}
}

// connRecords waits, for at most within, until rc's connection of r has
// its tls record and an http one, and returns the latest of each; what
// names the wait in its failure.
func connRecords(t *testing.T, r *bumpStallRig, rc *rawClient, within time.Duration, what string) (tlsRec, httpRec *records.Record) {
	t.Helper()
	port := uint16(rc.LocalAddr().(*net.TCPAddr).Port)
	waitUntil(t, within, func() bool {
		tlsRec, httpRec = nil, nil
		for _, rec := range r.sink.parse(t) {
			if rec.ClientPort != port {
				continue
			}
			switch rec.Kind {
			case "tls":
				tlsRec = &rec
			case "http":
				httpRec = &rec
			}
		}
		return tlsRec != nil && httpRec != nil
	}, what)
	return tlsRec, httpRec
}
