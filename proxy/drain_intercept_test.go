package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestStackCloseEndsInterceptedSessions: the drain closes the stacks when
// its time for flows is up, with long polls still in flight on
// intercepted connections: cleartext HTTP/1, h2c and bumped HTTPS, each to
// an origin that read the request and never answers. Nobody reads the
// client while a request waits for its response, so only the watch on the
// client's connection (clientwatch.go) sees the stack close: every session
// must then end at once, its origin's connection closed and its records
// written (result reset, as a relayed TCP flow the drain ends), so that
// the drain's wait for the records (Proxy.Wait) returns at once. Before the
// watch the sessions stayed until the origins answered: the drain waited
// out its deadline and the records were lost.
func TestStackCloseEndsInterceptedSessions(t *testing.T) {
	bumpGot, bumpCancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	r := newBumpStallRig(t, time.Hour, func(_ *bumpStallRig, _ http.ResponseWriter, req *http.Request) {
		bumpGot <- struct{}{}
		<-req.Context().Done() // a long poll: no head until the appliance gives up
		bumpCancelled <- struct{}{}
	})
	plain, plainGot, plainClosed := silentOrigin(t, "")
	h2c, h2cGot, h2cClosed := silentOrigin(t, "")

	// Cleartext HTTP/1.
	c1 := r.dial0(t, plain)
	if _, err := io.WriteString(c1, "GET /poll HTTP/1.1\r\nHost: plain.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	wait(t, plainGot, 5*time.Second, "the HTTP/1 request did not reach its origin")

	// h2c (prior knowledge). The client's round trip is left to the
	// conn's cleanup: the appliance's side is what is checked.
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(context.Context, string, string, *tls.Config) (net.Conn, error) {
		return r.dial0(t, h2c), nil
	}}
	t.Cleanup(tr.CloseIdleConnections)
	go func() {
		resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get("http://h2c.example/poll")
		if err == nil {
			resp.Body.Close()
		}
	}()
	wait(t, h2cGot, 5*time.Second, "the h2c request did not reach its origin")

	// Bumped HTTPS.
	tc := tls.Client(r.dial0(t, r.dest), &tls.Config{ServerName: "big.example", RootCAs: r.roots, NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(tc, "GET /poll HTTP/1.1\r\nHost: big.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	wait(t, bumpGot, 5*time.Second, "the bumped request did not reach its origin")

	if n := r.p.Stats().TCPActive; n != 3 {
		t.Fatalf("tcp_active %d with three long polls in flight, want 3", n)
	}
	closedAt := time.Now()
	r.p.StacksClosing() // what the drain does once its time for flows is up
	r.ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := r.p.Wait(ctx); err != nil {
		t.Fatalf("3 s after the stacks closed the proxy still has %d TCP sessions open (records so far: %+v): "+
			"a drain would wait out its deadline and lose their records", r.p.Stats().TCPActive, r.sink.parse(t))
	}
	t.Logf("the sessions ended %v after the stacks closed", time.Since(closedAt).Round(time.Millisecond))
	wait(t, plainClosed, 2*time.Second, "the HTTP/1 origin's connection is still open")
	wait(t, h2cClosed, 2*time.Second, "the h2c origin's connection is still open")
	wait(t, bumpCancelled, 2*time.Second, "the bumped origin's request is still waiting")
	// Proxy.Wait returns once every record is handed to the writer, which
	// writes on a goroutine of its own: wait for the four.
	recs := r.sink.records(t, 4)
	hosts := map[string]bool{}
	tlsRecs := 0
	for _, rec := range recs {
		t.Logf("%s %s: result %s, error %q", rec.Kind, rec.Host, rec.Result, rec.Error)
		switch rec.Kind {
		case "http":
			hosts[rec.Host] = true
			if rec.Result != "reset" || rec.Status != 0 || !strings.Contains(rec.Error, "appliance's shutdown") {
				t.Errorf("the record of the request to %s: result %q, status %d, error %q; want reset, no status, the shutdown named", rec.Host, rec.Result, rec.Status, rec.Error)
			}
		case "tls":
			tlsRecs++
			if rec.Result != "reset" || !strings.Contains(rec.Error, "appliance's shutdown") {
				t.Errorf("the bumped connection's record: result %q, error %q; want reset, the shutdown named", rec.Result, rec.Error)
			}
		}
	}
	for _, h := range []string{"plain.example", "h2c.example", "big.example"} {
		if !hosts[h] {
			t.Errorf("no record of the request to %s (records: %d)", h, len(recs))
		}
	}
	if tlsRecs != 1 {
		t.Errorf("%d tls records, want the bumped connection's one", tlsRecs)
	}
	if g := sessionGoroutines(3 * time.Second); g != "" {
		t.Errorf("goroutines of the sessions left after they ended:\n%s", g)
	}
}

// dial0 connects the client to dst through the appliance and sends
// nothing.
func (r *stallRig) dial0(t *testing.T, dst netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.client.DialTCP(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
